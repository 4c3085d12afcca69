"""The engine's random generator (src/ops/rng.rs: xoshiro256** seeded by splitmix64
from a seed and a stream, the input id), re-implemented so that reference scripts can
hand Captum, Quantus or torch the very draws the engine makes."""

import math


class EngineRng:
    M = (1 << 64) - 1

    def __init__(self, seed, stream):
        st = (seed ^ (stream * 0xD1B54A32D192ED03)) & self.M
        self.s = []
        for _ in range(4):
            st = (st + 0x9E3779B97F4A7C15) & self.M
            z = st
            z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & self.M
            z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & self.M
            self.s.append(z ^ (z >> 31))

    def next_u64(self):
        s, M = self.s, self.M
        rotl = lambda x, k: ((x << k) | (x >> (64 - k))) & M  # noqa: E731
        result = (rotl((s[1] * 5) & M, 7) * 9) & M
        t = (s[1] << 17) & M
        s[2] ^= s[0]
        s[3] ^= s[1]
        s[1] ^= s[2]
        s[0] ^= s[3]
        s[2] ^= t
        s[3] = rotl(s[3], 45)
        return result

    def uniform(self):
        """Uniform in [0, 1)."""
        return (self.next_u64() >> 11) * (1.0 / (1 << 53))

    def below(self, n):
        """Uniform in 0..n without modulo bias."""
        zone = self.M - self.M % n
        while True:
            v = self.next_u64()
            if v < zone:
                return v % n

    def normal(self):
        """Standard normal (Box–Muller)."""
        u1 = 1.0 - self.uniform()
        u2 = self.uniform()
        return math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * u2)

    def permutation(self, n):
        """Fisher–Yates."""
        p = list(range(n))
        for i in range(n - 1, 0, -1):
            j = self.below(i + 1)
            p[i], p[j] = p[j], p[i]
        return p
