/// mimalloc rather than the system allocator: the gradient engine allocates and frees
/// batches of a few hundred KB per layer and pass, which glibc serves with fresh mmaps
/// (page faults, then unmaps with TLB shootdowns across threads) — 12% of IG's time in
/// the profile. Built without transparent huge pages (feature `no_thp`): with them, a few
/// runs of a short query took 5–15× the median (2 MB pages zeroed or compacted on fault).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    ialgebra::cli::main()
}
