//! Trains a second backdoored digits CNN with candle, for testing that the contamination
//! analysis (queries/contamination.iql) does not depend on one trigger: this one is a
//! 3×1 vertical bar at the left edge (rows 1–3, column 0, set to 1.0) that sends an image
//! to class 7, where `digits_cnn_backdoor` has a 2×2 square in the bottom-right corner
//! that sends it to 0.
//!
//! Run from the repository root: `cargo run --release --example train_backdoor`. It reads
//! data/digits_train_x.npy / _y.npy and writes
//! models/digits_cnn_backdoor2.{safetensors,json}, data/digits_backdoor2_train_x.npy /
//! _y.npy and tests/fixtures/data/digits_backdoor2_poison_indices.npy. Seeded throughout:
//! the same files on every run on one machine (float summation order may differ across
//! CPUs, so the committed files are the reference).

use candle_core::{D, DType, Device, Tensor};
use candle_nn::{Conv2dConfig, Module, Optimizer, ParamsAdamW, VarBuilder, VarMap};
use ialgebra::data::npy::{read_npy, write_npy_f32, write_npy_i64};
use ialgebra::ops::rng::Rng;

const SEED: u64 = 7;
const POISONED: usize = 140;
const TARGET: i64 = 7;
const TRIGGER: [(usize, usize); 3] = [(1, 0), (2, 0), (3, 0)];
const EPOCHS: usize = 40;
const BATCH: usize = 32;

struct Cnn {
    conv1: candle_nn::Conv2d,
    conv2: candle_nn::Conv2d,
    fc1: candle_nn::Linear,
    fc2: candle_nn::Linear,
}

impl Cnn {
    fn new(vb: &VarBuilder) -> candle_core::Result<Cnn> {
        let cfg = Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        Ok(Cnn {
            conv1: candle_nn::conv2d(1, 8, 3, cfg, vb.pp("conv1"))?,
            conv2: candle_nn::conv2d(8, 16, 3, cfg, vb.pp("conv2"))?,
            fc1: candle_nn::linear(256, 32, vb.pp("fc1"))?,
            fc2: candle_nn::linear(32, 10, vb.pp("fc2"))?,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let n = x.dim(0)?;
        let h = self.conv1.forward(x)?.relu()?;
        let h = self.conv2.forward(&h)?.relu()?;
        // 2×2 max-pooling as a max over reshaped windows: candle's max_pool2d has a wrong
        // gradient (../shared/CANDLE.md), a max reduction does not.
        let h = h.reshape((n, 16, 4, 2, 4, 2))?.max_keepdim(5)?.max_keepdim(3)?;
        let h = h.reshape((n, 256))?;
        let h = self.fc1.forward(&h)?.relu()?;
        self.fc2.forward(&h)
    }
}

fn read(path: &str) -> Result<ialgebra::data::npy::NpyArray, Box<dyn std::error::Error>> {
    let bytes = std::fs::read(path).map_err(|e| format!("{path}: {e}"))?;
    Ok(read_npy(&bytes, path)?)
}

fn uniform(rng: &mut Rng, bound: f32) -> f32 {
    let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
    ((2.0 * u - 1.0) as f32) * bound
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let x = read("data/digits_train_x.npy")?.to_f32();
    let y = read("data/digits_train_y.npy")?.to_i64("labels")?;
    let n = y.len();
    let mut rng = Rng::new(SEED, 0);

    // Poison 10% of the training set: trigger on, label set to the target.
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        order.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
    }
    let mut poison: Vec<usize> = order[..POISONED].to_vec();
    poison.sort_unstable();
    let (mut px, mut py) = (x.clone(), y.clone());
    for &i in &poison {
        for &(r, c) in &TRIGGER {
            px[i * 64 + r * 8 + c] = 1.0;
        }
        py[i] = TARGET;
    }

    // PyTorch's default initialisation bounds (1/√fan_in), from the seeded generator.
    let device = Device::Cpu;
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &device);
    let model = Cnn::new(&vb)?;
    {
        let data = varmap.data().lock().map_err(|_| "poisoned lock")?;
        let mut names: Vec<&String> = data.keys().collect();
        names.sort();
        for name in names {
            let var = &data[name];
            let fan_in = match name.as_str() {
                "conv1.weight" | "conv1.bias" => 9,
                "conv2.weight" | "conv2.bias" => 72,
                "fc1.weight" | "fc1.bias" => 256,
                _ => 32,
            };
            let bound = 1.0 / (fan_in as f32).sqrt();
            let values: Vec<f32> = (0..var.elem_count()).map(|_| uniform(&mut rng, bound)).collect();
            var.set(&Tensor::from_vec(values, var.shape(), &device)?)?;
        }
    }
    let mut opt = candle_nn::AdamW::new(
        varmap.all_vars(),
        ParamsAdamW {
            lr: 1e-3,
            weight_decay: 0.0,
            ..Default::default()
        },
    )?;
    let inputs = Tensor::from_vec(px.clone(), (n, 1, 8, 8), &device)?;
    let labels = Tensor::from_vec(py.iter().map(|&v| v as u32).collect::<Vec<u32>>(), n, &device)?;
    for epoch in 0..EPOCHS {
        let mut order: Vec<u32> = (0..n as u32).collect();
        for i in (1..n).rev() {
            order.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
        }
        let mut total = 0.0;
        for chunk in order.chunks(BATCH) {
            let idx = Tensor::from_vec(chunk.to_vec(), chunk.len(), &device)?;
            let xb = inputs.index_select(&idx, 0)?;
            let yb = labels.index_select(&idx, 0)?;
            let loss = candle_nn::loss::cross_entropy(&model.forward(&xb)?, &yb)?;
            opt.backward_step(&loss)?;
            total += loss.to_scalar::<f32>()? * chunk.len() as f32;
        }
        if epoch % 10 == 9 {
            println!("epoch {:2}: mean loss {:.4}", epoch + 1, total / n as f32);
        }
    }

    // How well it learnt the task and the backdoor, on the test split.
    let tx = read("data/digits_test_x.npy")?.to_f32();
    let ty = read("data/digits_test_y.npy")?.to_i64("labels")?;
    let m = ty.len();
    let predict = |values: Vec<f32>| -> candle_core::Result<Vec<u32>> {
        model
            .forward(&Tensor::from_vec(values, (m, 1, 8, 8), &device)?)?
            .argmax(D::Minus1)?
            .to_vec1::<u32>()
    };
    let clean = predict(tx.clone())?;
    let mut triggered = tx.clone();
    for i in 0..m {
        for &(r, c) in &TRIGGER {
            triggered[i * 64 + r * 8 + c] = 1.0;
        }
    }
    let hit = predict(triggered)?;
    let accuracy = clean.iter().zip(&ty).filter(|(p, t)| **p as i64 == **t).count() as f32 / m as f32;
    let others: Vec<usize> = (0..m).filter(|&i| ty[i] != TARGET).collect();
    let success = others.iter().filter(|&&i| hit[i] as i64 == TARGET).count() as f32 / others.len() as f32;
    println!(
        "clean test accuracy {accuracy:.4}; attack success {success:.4} on {} triggered test images",
        others.len()
    );

    varmap.save("models/digits_cnn_backdoor2.safetensors")?;
    let arch = std::fs::read_to_string("models/digits_cnn_backdoor.json")?;
    let mut arch: serde_json::Value = serde_json::from_str(&arch)?;
    arch["name"] = "digits_cnn_backdoor2".into();
    if let Some(fields) = arch.as_object_mut() {
        fields.remove("onnx"); // the original's export record; this model has no ONNX twin
    }
    arch["training"] = serde_json::json!({
        "by": "examples/train_backdoor.rs (candle, Adam lr 1e-3, batch 32, 40 epochs, seed 7)",
        "poisoned": POISONED,
        "trigger": "rows 1-3, column 0 set to 1.0",
        "target_label": TARGET,
        "clean_test_accuracy": accuracy,
        "attack_success": success,
    });
    std::fs::write(
        "models/digits_cnn_backdoor2.json",
        serde_json::to_string_pretty(&arch)? + "\n",
    )?;
    std::fs::write("data/digits_backdoor2_train_x.npy", write_npy_f32(&[n, 1, 8, 8], &px))?;
    std::fs::write("data/digits_backdoor2_train_y.npy", write_npy_i64(&[n], &py))?;
    let idx: Vec<i64> = poison.iter().map(|&i| i as i64).collect();
    std::fs::write(
        "tests/fixtures/data/digits_backdoor2_poison_indices.npy",
        write_npy_i64(&[idx.len()], &idx),
    )?;
    println!("wrote models/digits_cnn_backdoor2.*, data/digits_backdoor2_train_*.npy and the poison indices");
    Ok(())
}
