//! `pith-compress distill` (feature `train`) on tiny random llama models: the candle student
//! computes pith's logits, the loss's gradients match finite differences, one step lowers the
//! loss, and the binary trains, checkpoints, resumes and refuses bad input.
#![cfg(feature = "train")]

use candle_core::{CpuStorage, DType, Device, Storage, Tensor};
use pith::gguf::Gguf;
use pith::model::{Logits, Model, State};
use pith::testing::{build, spm_vocab, TinySpec};
use pith::{Pool, Precision};
use pith_kernels::GgmlType;
use pith_models::distill::{
    check_manual_backward, fake_quant, grads, grads_batch, grads_batch_with, loss, loss_grad, lr_at, lr_cosine,
    teacher_logits, AdamW, GradSum, Noise, Student,
};
use pith_models::prune::AlignedBytes;
use std::process::Command;

fn tiny(seed: u64) -> AlignedBytes {
    tiny_tied(seed, false)
}

fn tiny_tied(seed: u64, tied: bool) -> AlignedBytes {
    let (b, _) = build(&TinySpec { n_layer: 2, n_ff: 96, seed, tied, ..Default::default() });
    AlignedBytes::from(pith_models::prune::without_layers(&Gguf::parse(&b).unwrap(), &[]))
}

fn pith_logits(m: &Model<'_>, toks: &[u32]) -> Vec<f32> {
    let mut s = State::new(m, toks.len(), toks.len()).unwrap();
    s.set_precision(Precision::F32);
    m.forward(&mut s, &Pool::single(), toks, Logits::From(0)).unwrap().to_vec()
}

const TOKS: [u32; 13] = [1, 17, 5, 88, 42, 3, 9, 60, 61, 2, 14, 77, 30];

#[test]
fn the_student_computes_piths_logits() {
    for tied in [false, true] {
        let (b, _) = build(&TinySpec { tied, seed: 4, ..Default::default() });
        let b = AlignedBytes::from(pith_models::prune::without_layers(&Gguf::parse(&b).unwrap(), &[]));
        let g = Gguf::parse(b.as_slice()).unwrap();
        let m = Model::from_gguf(&g).unwrap();
        let s = Student::from_gguf(&g, DType::F64, &Device::Cpu, 16).unwrap();
        let got: Vec<f64> = s.forward(&TOKS).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let want = pith_logits(&m, &TOKS);
        let scale = want.iter().fold(0f32, |a, v| a.max(v.abs())) as f64;
        for (x, y) in got.iter().zip(&want) {
            // pith keeps K and V in f16: agreement to about 1e-3 of the largest logit.
            assert!((x - *y as f64).abs() < 2e-3 * scale, "tied {tied}: {x} vs {y}");
        }
    }
}

#[test]
fn loss_gradients_match_finite_differences() {
    // Untied, then tied (the embedding's gradient sums the head's and the lookup's).
    for tied in [false, true] {
        gradients_match_finite_differences(tied);
    }
}

fn gradients_match_finite_differences(tied: bool) {
    let (tb, sb) = (tiny(1), tiny_tied(2, tied));
    let tg = Gguf::parse(tb.as_slice()).unwrap();
    let tm = Model::from_gguf(&tg).unwrap();
    let sg = Gguf::parse(sb.as_slice()).unwrap();
    let s = Student::from_gguf(&sg, DType::F64, &Device::Cpu, 16).unwrap();
    let mut st = State::new(&tm, 16, 16).unwrap();
    st.set_precision(Precision::F32);
    let n = TOKS.len() - 1;
    let tl = teacher_logits(&tm, &mut st, &Pool::single(), &TOKS[..n], &s).unwrap();
    let (alpha, temp) = (0.3, 2.0);
    let (_, g) = grads(&s, &TOKS, &tl, alpha, temp).unwrap();
    let value = || -> f64 {
        let l = loss(&s.forward(&TOKS[..n]).unwrap(), &tl, &TOKS[1..], alpha, temp).unwrap();
        l.to_scalar::<f64>().unwrap()
    };
    let h = 1e-5;
    for (name, idx) in [
        ("blk.0.attn_q.weight", 37),
        ("blk.0.attn_k.weight", 100),
        ("blk.1.attn_v.weight", 5),
        ("blk.1.attn_output.weight", 640),
        ("blk.0.ffn_gate.weight", 77),
        ("blk.1.ffn_down.weight", 1000),
        ("blk.0.attn_norm.weight", 3),
        ("output_norm.weight", 9),
        ("token_embd.weight", 17 * 64 + 2),
        ("token_embd.weight", 5 * 64 + 11),
        ("output.weight", 42 * 64 + 7),
    ] {
        let Some(var) = s.vars.get(name) else {
            assert!(tied && name == "output.weight", "{name} missing");
            continue;
        };
        let orig: Vec<f64> = var.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
        let dims = var.as_tensor().dims().to_vec();
        let set = |d: f64| {
            let mut v = orig.clone();
            v[idx] += d;
            var.set(&Tensor::from_vec(v, dims.clone(), &Device::Cpu).unwrap()).unwrap();
        };
        set(h);
        let up = value();
        set(-h);
        let down = value();
        set(0.0);
        let fd = (up - down) / (2.0 * h);
        let an: f64 = g[name].flatten_all().unwrap().to_vec1::<f64>().unwrap()[idx];
        assert!((fd - an).abs() <= 1e-6 + 1e-4 * an.abs(), "{name}[{idx}]: finite difference {fd} vs gradient {an}");
    }
}

#[test]
fn the_closed_form_gradient_is_the_losss() {
    // Random logits; the loss's value and autograd gradient are the reference.
    let (n, v) = (7, 50);
    let mut r = 12345u64;
    let mut rnd = |k: usize| -> Vec<f64> {
        (0..k)
            .map(|_| {
                r = r.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((r >> 11) as f64 / (1u64 << 53) as f64 - 0.5) * 8.0
            })
            .collect()
    };
    let s = candle_core::Var::from_vec(rnd(n * v), (n, v), &Device::Cpu).unwrap();
    let t = Tensor::from_vec(rnd(n * v), (n, v), &Device::Cpu).unwrap();
    let labels = [3u32, 49, 0, 17, 17, 22, 8];
    for (alpha, temp) in [(0.0, 1.0), (1.0, 1.0), (0.3, 2.0), (0.0, 0.5)] {
        let l = loss(s.as_tensor(), &t, &labels, alpha, temp).unwrap();
        let want_value = l.to_scalar::<f64>().unwrap();
        let want = l.backward().unwrap().get(s.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let (value, g) = loss_grad(s.as_tensor(), &t, &labels, alpha, temp).unwrap();
        let got = g.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        assert!(
            (value - want_value).abs() < 1e-12 * want_value.abs().max(1.0),
            "α {alpha} T {temp}: {value} vs {want_value}"
        );
        for (a, b) in got.iter().zip(&want) {
            assert!((a - b).abs() < 1e-12, "α {alpha} T {temp}: {a} vs {b}");
        }
        assert!(!g.track_op(), "the closed-form gradient carries no graph");
    }
    assert!(loss_grad(s.as_tensor(), &t, &labels[1..], 0.5, 1.0).is_err(), "labels must match the positions");
}

#[test]
fn one_step_lowers_the_loss() {
    let (tb, sb) = (tiny(1), tiny(2));
    let tg = Gguf::parse(tb.as_slice()).unwrap();
    let tm = Model::from_gguf(&tg).unwrap();
    let sg = Gguf::parse(sb.as_slice()).unwrap();
    let s = Student::from_gguf(&sg, DType::F32, &Device::Cpu, 16).unwrap();
    let mut st = State::new(&tm, 16, 16).unwrap();
    let n = TOKS.len() - 1;
    let tl = teacher_logits(&tm, &mut st, &Pool::single(), &TOKS[..n], &s).unwrap();
    let mut opt = AdamW::new(&s, 0.01).unwrap();
    let (before, g) = grads(&s, &TOKS, &tl, 0.0, 1.0).unwrap();
    // Nothing carries a step's graph into the next step (a graph kept alive by a gradient or
    // a moment would keep every activation of its step on the device).
    assert!(g.values().all(|t| !t.track_op()), "gradients keep their graph");
    // The moments and the gradient sums are updated in place: the same buffers every step, so
    // nothing long-lived is re-allocated (on a GPU that fragments the allocator's pool).
    let addr = |t: &Tensor| match &*t.storage_and_layout().0 {
        Storage::Cpu(CpuStorage::F32(v)) => v.as_ptr() as usize,
        _ => 0,
    };
    let moments = |o: &AdamW| o.m.values().chain(o.v.values()).map(|t| addr(t)).collect::<Vec<_>>();
    let at_start = moments(&opt);
    let mut sum = GradSum::new(&s).unwrap();
    sum.add(g.clone()).unwrap();
    sum.add(g.clone()).unwrap();
    let mean = sum.take_mean(2).unwrap();
    for (n, t) in &mean {
        let d = (t - &g[n]).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(d < 1e-6, "{n}: the mean of two equal gradients differs from them by {d}");
    }
    opt.step(&s, &mean, 1e-3).unwrap();
    assert_eq!(moments(&opt), at_start, "a step re-allocated the AdamW moments");
    assert!(opt.m.values().all(|m| m.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() > 0.0));
    let (after, g2) = grads(&s, &TOKS, &tl, 0.0, 1.0).unwrap();
    assert!(after < before, "{before} → {after}");
    // A new step's sum starts from zero, not from the last step's.
    sum.add(g2.clone()).unwrap();
    for (n, t) in sum.take_mean(1).unwrap() {
        assert_eq!(
            t.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            g2[&n].flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
    }
    // The schedule: warm-up to the peak, then down to 10 % of it.
    assert!((lr_at(0, 100, 10, 1.0) - 0.1).abs() < 1e-12 && (lr_at(9, 100, 10, 1.0) - 1.0).abs() < 1e-12);
    assert!((lr_at(100, 100, 10, 1.0) - 0.1).abs() < 1e-12 && lr_at(50, 100, 10, 1.0) < 1.0);
    assert!((lr_cosine(0.0, 1.0) - 1.0).abs() < 1e-12 && (lr_cosine(0.5, 1.0) - 0.55).abs() < 1e-12);
    assert!((lr_cosine(3.0, 1.0) - 0.1).abs() < 1e-12);
}

#[test]
fn a_batch_computes_each_sequence_alone_and_the_frozen_teacher_the_same() {
    let b = tiny(5);
    let g = Gguf::parse(b.as_slice()).unwrap();
    let s = Student::from_gguf(&g, DType::F64, &Device::Cpu, 16).unwrap();
    let frozen = Student::frozen(&g, DType::F64, &Device::Cpu, 16).unwrap();
    let (a, c) = (&TOKS[..6], &TOKS[6..12]);
    let both: Vec<u32> = a.iter().chain(c).copied().collect();
    let batch: Vec<f64> = s.forward_batch(&both, 2).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    let alone: Vec<f64> = [s.forward(a).unwrap(), s.forward(c).unwrap()]
        .iter()
        .flat_map(|t| t.flatten_all().unwrap().to_vec1::<f64>().unwrap())
        .collect();
    assert_eq!(batch.len(), alone.len());
    for (x, y) in batch.iter().zip(&alone) {
        assert!((x - y).abs() < 1e-9, "{x} vs {y}");
    }
    let f: Vec<f64> = frozen.forward_batch(&both, 2).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(f, batch);
    assert!(s.forward_batch(&TOKS, 2).is_err(), "13 tokens do not split into 2 sequences");
    // The batch's gradients are the mean of each sequence's (equal lengths).
    let tb = tiny(6);
    let tg = Gguf::parse(tb.as_slice()).unwrap();
    let tm = Model::from_gguf(&tg).unwrap();
    let mut st = State::new(&tm, 16, 16).unwrap();
    st.set_precision(Precision::F32);
    let mut tl = |q: &[u32]| teacher_logits(&tm, &mut st, &Pool::single(), &q[..q.len() - 1], &s).unwrap();
    let (ta, tc) = (tl(a), tl(c));
    let (_, ga) = grads(&s, a, &ta, 0.5, 2.0).unwrap();
    let (_, gc) = grads(&s, c, &tc, 0.5, 2.0).unwrap();
    let (_, gb) = grads_batch(&s, &[a, c], &Tensor::cat(&[&ta, &tc], 0).unwrap(), 0.5, 2.0).unwrap();
    for n in ["blk.0.attn_q.weight", "blk.1.ffn_down.weight", "token_embd.weight"] {
        let v = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        for ((x, y), z) in v(&gb[n]).iter().zip(v(&ga[n])).zip(v(&gc[n])) {
            assert!((x - (y + z) / 2.0).abs() < 1e-12, "{n}: {x} vs mean of {y}, {z}");
        }
    }
}

/// Two sequences of 9 tokens (overlapping) for the backward tests.
const TWO_SEQS: (&[u32], &[u32]) = (TOKS.split_at(9).0, TOKS.split_at(4).1);

/// The tiny student (seed 2; `tied` head; under `qat` when given) with weights in `dt`, and the
/// tiny teacher's (seed 1) logits for [`TWO_SEQS`], concatenated.
fn student_and_teacher_logits(dt: DType, tied: bool, qat: Option<&str>) -> (Student, Tensor) {
    let tb = tiny(1);
    let tg = Gguf::parse(tb.as_slice()).unwrap();
    let tm = Model::from_gguf(&tg).unwrap();
    let sb = tiny_tied(2, tied);
    let sg = Gguf::parse(sb.as_slice()).unwrap();
    let mut s = Student::from_gguf(&sg, dt, &Device::Cpu, 16).unwrap();
    if let Some(q) = qat {
        s.set_qat(&sg, q).unwrap();
    }
    let mut st = State::new(&tm, 16, 16).unwrap();
    st.set_precision(Precision::F32);
    let mut tl = |q: &[u32]| teacher_logits(&tm, &mut st, &Pool::single(), &q[..q.len() - 1], &s).unwrap();
    let t = Tensor::cat(&[&tl(TWO_SEQS.0), &tl(TWO_SEQS.1)], 0).unwrap();
    (s, t)
}

#[test]
fn the_hand_written_layer_backward_is_autograds() {
    // Two sequences of 9 (GQA 4/2), tied and untied, and under QAT (the straight-through
    // gradient of the fake-quantized weights): every variable's gradient and the loss, by hand
    // from the forward pass's kept activations (the default) and recomputing each layer
    // (`--recompute`).
    let (a, c) = TWO_SEQS;
    for (tied, qat, dt) in [(false, false, DType::F64), (true, false, DType::F64), (false, true, DType::F32)] {
        let (mut s, t) = student_and_teacher_logits(dt, tied, qat.then_some("Q8_0"));
        let (va, ga) = grads_batch_with(&s, &[a, c], &t, 0.3, 2.0, false).unwrap();
        assert!(!s.recompute);
        let kept = grads_batch_with(&s, &[a, c], &t, 0.3, 2.0, true).unwrap();
        s.recompute = true;
        let recomputed = grads_batch_with(&s, &[a, c], &t, 0.3, 2.0, true).unwrap();
        let tol = if dt == DType::F64 { 1e-10 } else { 2e-4 };
        for (how, (vm, gm)) in [("kept", kept), ("recomputed", recomputed)] {
            assert!((va - vm).abs() < tol, "{how}: loss {va} vs {vm}");
            assert_eq!(ga.keys().collect::<Vec<_>>(), gm.keys().collect::<Vec<_>>());
            for (n, g) in &ga {
                let v = |t: &Tensor| t.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
                let (x, y) = (v(g), v(&gm[n]));
                let scale = x.iter().fold(1e-3f64, |m, v| m.max(v.abs()));
                for (p, q) in x.iter().zip(&y) {
                    assert!(
                        (p - q).abs() <= tol * scale,
                        "tied {tied} qat {qat} {n}: autograd {p} vs by hand ({how}) {q}"
                    );
                }
            }
        }
    }
}

#[test]
fn the_hand_written_backward_under_mixed_precision_is_as_close_as_autograd() {
    // The check the trainer runs on a GPU before using the hand-written backward, here with f64
    // weights and an f32 forward pass (bf16 over f32 on a GPU: candle's CPU matmul has no bf16):
    // both narrow gradients are measured against autograd in the weights' dtype.
    let (a, c) = TWO_SEQS;
    let (mut s, t) = student_and_teacher_logits(DType::F64, false, None);
    let same = check_manual_backward(&mut s, &[a, c], &t, 0.3, 2.0).unwrap();
    assert!(same.autograd.is_none() && same.by_hand < 1e-10 && same.passes(), "{same}");
    s.set_compute(DType::F32).unwrap();
    let mixed = check_manual_backward(&mut s, &[a, c], &t, 0.3, 2.0).unwrap();
    let ag = mixed.autograd.unwrap();
    // The narrow dtype's rounding is visible (the reference is really wider), both paths are
    // near it, and the student computes in f32 again afterwards.
    assert!(ag > 1e-12 && ag < 1e-4 && mixed.by_hand < 1e-4 && mixed.passes(), "{mixed}");
    assert_eq!(s.compute, DType::F32);
    assert!(mixed.to_string().contains("agrees with autograd in F64"), "{mixed}");
}

#[test]
fn fake_quantization_is_the_quantizers_grid() {
    // Rows of 512 like trained weights (pseudo-random, magnitudes varying by block) and a zero
    // block. The fixed point holds for such rows; the quantizers' scale searches can move a
    // contrived block (a constant one, or a few repeated values) to a neighbouring grid.
    let mut x = 0x9e3779b97f4a7c15u64;
    let mut w: Vec<f32> = (0..1024)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ((x >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.05 * (1.0 + (i / 32 % 7) as f32)
        })
        .collect();
    w[96..128].iter_mut().for_each(|x| *x = 0.0);
    let t = Tensor::from_vec(w.clone(), (2, 512), &Device::Cpu).unwrap();
    let imp: Vec<f32> = (0..512).map(|i| 0.5 + (i % 13) as f32 * 0.1).collect();
    for ty in [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q8_0, GgmlType::Q4_K, GgmlType::Q5_0, GgmlType::Q6_K] {
        let fq: Vec<f32> = fake_quant(&t, ty).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let round_trip = |src: &[f32], importance: Option<&[f32]>| -> Vec<f32> {
            let mut out = Vec::new();
            for row in src.chunks(512) {
                let mut bytes = vec![0u8; ty.row_bytes(512).unwrap()];
                match importance {
                    Some(imp) => pith_kernels::quantize_row_weighted(ty, row, imp, &mut bytes),
                    None => pith_kernels::quantize_row(ty, row, &mut bytes),
                }
                let mut deq = vec![0f32; 512];
                pith_kernels::dequantize_row(ty, &bytes, &mut deq);
                out.extend(deq);
            }
            out
        };
        // Exactly what the file will hold, and a fixed point of the quantizer (plain or with
        // an imatrix): quantizing the fake-quantized weights gives them back.
        assert_eq!(fq, round_trip(&w, None), "{ty}");
        assert_eq!(round_trip(&fq, None), fq, "{ty}: not a fixed point");
        assert_eq!(round_trip(&fq, Some(&imp)), fq, "{ty}: not a fixed point with importance weights");
        assert!(fq.iter().zip(&w).any(|(a, b)| a != b), "{ty}: nothing rounded");
    }
    // Rows that no block of the type fills are refused.
    let odd = Tensor::zeros((2, 96), DType::F32, &Device::Cpu).unwrap();
    assert!(fake_quant(&odd, GgmlType::Q4_K).is_err());
}

#[test]
fn quantization_aware_steps_train_through_the_grid() {
    let (tb, sb) = (tiny(1), tiny(2));
    let tg = Gguf::parse(tb.as_slice()).unwrap();
    let tm = Model::from_gguf(&tg).unwrap();
    let sg = Gguf::parse(sb.as_slice()).unwrap();
    let mut s = Student::from_gguf(&sg, DType::F32, &Device::Cpu, 16).unwrap();
    s.set_qat(&sg, "Q4_0").unwrap();
    assert!(s.qat.contains_key("blk.0.attn_q.weight") && !s.qat.contains_key("token_embd.weight"));
    let mut st = State::new(&tm, 16, 16).unwrap();
    let n = TOKS.len() - 1;
    let tl = teacher_logits(&tm, &mut st, &Pool::single(), &TOKS[..n], &s).unwrap();
    // The forward pass sees the grid: the logits differ from the unquantized student's.
    let plain = {
        let p = Student::from_gguf(&sg, DType::F32, &Device::Cpu, 16).unwrap();
        p.forward(&TOKS[..n]).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()
    };
    let q: Vec<f32> = s.forward(&TOKS[..n]).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    assert!(plain.iter().zip(&q).any(|(a, b)| (a - b).abs() > 1e-4));
    // Straight-through: every linear weight gets a gradient, and steps lower the loss.
    let mut opt = AdamW::new(&s, 0.0).unwrap();
    let (before, g) = grads(&s, &TOKS, &tl, 0.0, 1.0).unwrap();
    assert!(g.contains_key("blk.0.attn_q.weight") && g.contains_key("blk.1.ffn_down.weight"));
    for _ in 0..5 {
        let (_, g) = grads(&s, &TOKS, &tl, 0.0, 1.0).unwrap();
        opt.step(&s, &g, 3e-3).unwrap();
    }
    let (after, _) = grads(&s, &TOKS, &tl, 0.0, 1.0).unwrap();
    assert!(after < before, "{before} → {after}");
}

const WORDS: [&str; 8] = ["the", "cat", "sat", "on", "mat", "a", "dog", "ran"];

fn with_vocab(dir: &std::path::Path, name: &str, n_ff: usize, extra: usize, seed: u64) -> std::path::PathBuf {
    let vocab = spm_vocab(&WORDS, extra);
    let sp = TinySpec { n_vocab: vocab.len(), n_ff, seed, vocab: Some(vocab), ..Default::default() };
    let p = dir.join(name);
    std::fs::write(&p, build(&sp).0).unwrap();
    p
}

/// The training text of the binary's tests: 600 of [`WORDS`].
fn word_text(dir: &std::path::Path) -> std::path::PathBuf {
    let text = dir.join("text.txt");
    std::fs::write(&text, (0..600).map(|i| WORDS[(i * 5 + i / 7) % 8]).collect::<Vec<_>>().join(" ")).unwrap();
    text
}

/// `--teacher T --student S -f TEXT -o OUT -c 16`, the arguments every call of the binary here has.
fn io_args(
    teacher: &std::path::Path,
    student: &std::path::Path,
    text: &std::path::Path,
    out: &std::path::Path,
) -> Vec<std::ffi::OsString> {
    let mut v: Vec<std::ffi::OsString> = Vec::new();
    for (flag, path) in [("--teacher", teacher), ("--student", student), ("-f", text), ("-o", out)] {
        v.push(flag.into());
        v.push(path.into());
    }
    v.extend(["-c", "16"].map(std::ffi::OsString::from));
    v
}

fn run(args: &[&std::ffi::OsStr]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_pith-compress"))
        .arg("distill")
        .args(args)
        .env("PITH_NO_PROGRESS", "1")
        .output()
        .unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn the_binary_trains_resumes_and_refuses_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let teacher = with_vocab(p, "t.gguf", 128, 0, 1);
    let student = with_vocab(p, "s.gguf", 64, 0, 2);
    let other_shape = with_vocab(p, "s2.gguf", 32, 0, 3);
    let other_vocab = with_vocab(p, "s3.gguf", 64, 4, 3);
    let text = word_text(p);
    let out = p.join("out.gguf");
    let ckpt = p.join("c.ckpt");
    let os = |s: &str| std::ffi::OsString::from(s);
    let base = |student: &std::path::Path| -> Vec<std::ffi::OsString> {
        let mut v = io_args(&teacher, student, &text, &out);
        v.extend([
            os("--accum"),
            os("2"),
            os("--tokens"),
            os("96"),
            os("--val-every"),
            os("1"),
            os("--checkpoint-every"),
            os("1"),
            os("--checkpoint"),
            ckpt.clone().into_os_string(),
            os("--lr"),
            os("1e-3"),
        ]);
        v
    };
    let call = |v: Vec<std::ffi::OsString>| run(&v.iter().map(|s| s.as_os_str()).collect::<Vec<_>>());
    let (ok, err) = call(base(&student));
    assert!(ok, "{err}");
    assert!(err.contains("step 1: validation loss") && err.contains("tok/s"), "{err}");
    assert!(ckpt.exists());
    // Every tensor steps through the in-place AdamW (a gradient that is not a contiguous f32 run
    // would take candle's ops), with gradients summed over micro-batches and without.
    let in_place = |err: &str| {
        let line = err.lines().find(|l| l.contains("AdamW in place for")).unwrap_or_else(|| panic!("{err}"));
        let n: Vec<usize> = line.split_whitespace().filter_map(|w| w.parse().ok()).collect();
        assert!(n.len() == 2 && n[0] == n[1] && n[0] > 0, "{line}");
    };
    in_place(&err);
    let mut one = base(&student);
    let at = one.iter().position(|a| a == "--accum").unwrap();
    one[at + 1] = os("1");
    for (flag, path) in [("--checkpoint", "c1.ckpt"), ("-o", "out1.gguf")] {
        let at = one.iter().position(|a| a == flag).unwrap();
        one[at + 1] = p.join(path).into_os_string();
    }
    let (ok, err1) = call(one);
    assert!(ok, "{err1}");
    in_place(&err1);
    // --file-repeat: the files' text again at other offsets (more training sequences, the same
    // held-out ones); 0 is refused.
    let train_seqs = |err: &str| -> usize {
        let at = err.find(" train / ").unwrap_or_else(|| panic!("no sequence count: {err}"));
        err[..at].rsplit(' ').next().and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("{err}"))
    };
    let once = train_seqs(&err);
    let mut v = base(&student);
    v.extend([os("--file-repeat"), os("3"), os("--force")]);
    let (ok, err3) = call(v);
    assert!(ok, "{err3}");
    assert!(train_seqs(&err3) > 2 * once, "{once} → {err3}");
    let mut v = base(&student);
    v.extend([os("--file-repeat"), os("0"), os("--force")]);
    let (ok, err0) = call(v);
    assert!(!ok && err0.contains("--file-repeat"), "{err0}");
    // The result is a model pith runs.
    let bytes = AlignedBytes::from(pith_models::prune::without_layers(
        &Gguf::parse(&std::fs::read(&out).unwrap()).unwrap(),
        &[],
    ));
    let g = Gguf::parse(bytes.as_slice()).unwrap();
    let m = Model::from_gguf(&g).unwrap();
    assert_eq!(m.config.n_ff, 64);
    assert!(pith_logits(&m, &[1, 2, 3]).iter().all(|v| v.is_finite()));
    // Resume from the checkpoint (step 2 of 3).
    let mut v = base(&student);
    v.extend([os("--resume"), ckpt.clone().into_os_string(), os("--force")]);
    let (ok, err) = call(v);
    assert!(ok && err.contains("resumed") && err.contains("at step 2"), "{err}");
    // A checkpoint from another shape, another vocabulary: clear errors, the output untouched.
    let before = std::fs::read(&out).unwrap();
    let mut v = base(&other_shape);
    v.extend([os("--resume"), ckpt.clone().into_os_string(), os("--force")]);
    let (ok, err) = call(v);
    assert!(!ok && err.contains("another shape"), "{err}");
    let mut v = base(&other_vocab);
    v.push(os("--force"));
    let (ok, err) = call(v);
    assert!(!ok && err.contains("vocabulary"), "{err}");
    // Batched, quantization-aware, stopped by the time limit: a checkpoint and the
    // command to continue; the output is not written.
    let out2 = p.join("out2.gguf");
    let ckpt2 = p.join("c2.ckpt");
    let mut v = base(&student);
    v[7] = out2.clone().into_os_string();
    v[19] = ckpt2.clone().into_os_string();
    v.extend([os("--batch"), os("2"), os("--qat"), os("q4_0"), os("--time-limit"), os("0")]);
    let mut bf16 = v.clone();
    bf16.extend([os("--dtype"), os("bf16")]);
    let (ok, err) = call(bf16);
    assert!(!ok && err.contains("--dtype bf16 needs --device cuda"), "{err}");
    let (ok, err) = call(v.clone());
    assert!(ok && err.contains("--time-limit reached at step 1") && err.contains("--resume"), "{err}");
    assert!(ckpt2.exists() && !out2.exists());
    v.truncate(v.len() - 2);
    v.extend([os("--resume"), ckpt2.into_os_string()]);
    let (ok, err) = call(v);
    assert!(
        ok && err.contains("at step 1") && err.contains("s trained)") && err.contains("fake quantization q4_0"),
        "{err}"
    );
    assert!(out2.exists());
    // The output holds the grid the training saw: each layer matrix is on Q4_0's grid, so
    // quantizing the file gives the same weights back.
    let file = pith::file::MappedFile::open(&out2).unwrap();
    let g = file.gguf().unwrap();
    let mut on_grid = 0;
    for t in g.tensors.iter().filter(|t| t.name.starts_with("blk.") && t.dims.len() == 2) {
        let w: Vec<f32> = t.data.chunks(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        let cols = t.dims[0] as usize;
        for row in w.chunks(cols) {
            let mut q = vec![0u8; GgmlType::Q4_0.row_bytes(cols).unwrap()];
            pith_kernels::quantize_row(GgmlType::Q4_0, row, &mut q);
            let mut back = vec![0f32; cols];
            pith_kernels::dequantize_row(GgmlType::Q4_0, &q, &mut back);
            assert_eq!(back, row, "{}", t.name);
        }
        on_grid += 1;
    }
    assert!(on_grid >= 7, "{on_grid} matrices");
    // A time budget instead of a token count: the run stops when it is spent (here after the
    // first step), with the rate decayed, and writes its output.
    let out3 = p.join("out3.gguf");
    let mut v = base(&student);
    v[7] = out3.clone().into_os_string();
    v[13] = os("100000000");
    v.extend([os("--budget"), os("0.001")]);
    let (ok, err) = call(v.clone());
    assert!(
        ok && err.contains("0 s of training in steps of 2 × 1") && err.contains("trained 1 steps, 32 tokens in all"),
        "{err}"
    );
    assert!(out3.exists());
    v.truncate(v.len() - 2);
    v.extend([os("--budget"), os("0"), os("--force")]);
    let (ok, err) = call(v);
    assert!(!ok && err.contains("--budget"), "{err}");
    let empty = p.join("empty.txt");
    std::fs::write(&empty, "").unwrap();
    let mut v = base(&student);
    v[5] = empty.into_os_string();
    v.push(os("--force"));
    let (ok, err) = call(v);
    assert!(!ok && err.contains("empty"), "{err}");
    assert_eq!(std::fs::read(&out).unwrap(), before);
    // Text sampled from the teacher joins the training sequences (3 of 17 tokens for 40).
    let out4 = p.join("out4.gguf");
    let mut v = base(&student);
    v[7] = out4.clone().into_os_string();
    v.extend([os("--synthetic"), os("40"), os("--synthetic-batch"), os("2")]);
    let (ok, err) = call(v.clone());
    assert!(
        ok && err.contains("sampled 3 sequences of 17 tokens from the teacher (temperature 1, 8-token prompts)"),
        "{err}"
    );
    assert!(out4.exists());
    v.extend([os("--synthetic-temp=-1"), os("--force")]);
    let (ok, err) = call(v);
    assert!(!ok && err.contains("--synthetic-temp"), "{err}");
    // One sample shared by several runs: `--sample-only` writes the text and trains nothing,
    // `--train-only` adds its sequences to the training set and never to the held-out ones.
    let counts = |err: &str| -> (usize, usize) {
        let at = err.find(" held-out sequences").expect(err);
        let head: Vec<&str> = err[..at].rsplit("distill: ").next().unwrap().split(" train / ").collect();
        (head[0].trim().parse().unwrap(), head[1].trim().parse().unwrap())
    };
    let (_, err) = call(base(&student).into_iter().chain([os("--force")]).collect());
    let plain = counts(&err);
    let synth = p.join("synth.txt");
    let mut v = base(&student);
    v[7] = synth.clone().into_os_string();
    v.extend([os("--synthetic"), os("160"), os("--synthetic-batch"), os("4"), os("--sample-only")]);
    let (ok, err) = call(v.clone());
    assert!(ok && err.contains("sampled 10 sequences of 17 tokens"), "{err}");
    let text = std::fs::read_to_string(&synth).unwrap();
    assert_eq!(text.split("\n\n").count(), 10, "{text}");
    assert!(!err.contains("step 1"), "{err}");
    let (ok, err) =
        call(base(&student).into_iter().chain([os("--train-only"), synth.clone().into(), os("--force")]).collect());
    assert!(ok, "{err}");
    let (train, held) = counts(&err);
    assert!(held == plain.1 && train > plain.0 + 5, "{plain:?} → {train} / {held}: {err}");
    // --sample-only needs --synthetic; a training-only file too short for one sequence is named.
    v.retain(|a| a != "--synthetic" && a != "160");
    v.push(os("--force"));
    let (ok, err) = call(v);
    assert!(!ok && err.contains("--sample-only"), "{err}");
    // --synthetic-prompt: a sequence is that many tokens of the files' text, then the teacher's.
    // The test vocabulary is letters: with the whole context as the prompt (16 of 17 tokens)
    // every paragraph but its last letter is a piece of the text; with 2-token prompts, where
    // the random teacher writes 15 letters, not every one is.
    let file_text = std::fs::read_to_string(word_text(p)).unwrap();
    let from_text = |prompt: &str| -> (usize, usize) {
        let mut v = base(&student);
        v[7] = synth.clone().into_os_string();
        v.extend([os("--synthetic"), os("170"), os("--synthetic-batch"), os("5"), os("--sample-only")]);
        v.extend([os("--synthetic-prompt"), os(prompt), os("--force")]);
        let (ok, err) = call(v);
        assert!(ok && err.contains(&format!("{prompt}-token prompts")), "{err}");
        let sample = std::fs::read_to_string(&synth).unwrap();
        let paras: Vec<&str> = sample.split("\n\n").collect();
        let inside = paras
            .iter()
            .filter(|q| {
                let n = q.chars().count();
                let head: String = q.chars().take(n.saturating_sub(1)).collect();
                n >= 10 && file_text.contains(&head)
            })
            .count();
        (inside, paras.len())
    };
    let (inside, all) = from_text("16");
    assert!(all == 10 && inside == all, "{inside} of {all}");
    let (inside, all) = from_text("2");
    assert!(all == 10 && inside < all, "{inside} of {all}");
    for bad in ["0", "17"] {
        let mut v = base(&student);
        v[7] = synth.clone().into_os_string();
        v.extend([os("--synthetic"), os("40"), os("--sample-only"), os("--synthetic-prompt"), os(bad), os("--force")]);
        let (ok, err) = call(v);
        assert!(!ok && err.contains("--synthetic-prompt: 1 to --ctx (16)"), "{bad}: {err}");
    }
    let short = p.join("short.txt");
    std::fs::write(&short, "one two").unwrap();
    let (ok, err) = call(base(&student).into_iter().chain([os("--train-only"), short.into(), os("--force")]).collect());
    assert!(!ok && err.contains("short.txt") && err.contains("not one sequence"), "{err}");
}

/// The model as a sampler: `len` tokens of each prompt, greedy, without a cache (the whole
/// sequence through the forward pass for every new token).
fn greedy_uncached(s: &Student, prompt: &[u32], len: usize) -> Vec<u32> {
    let mut out = prompt.to_vec();
    while out.len() < len {
        let l = s.forward(&out).unwrap();
        let last = l.narrow(0, out.len() - 1, 1).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let best = (0..last.len()).fold(0, |b, i| if last[i] > last[b] { i } else { b });
        out.push(best as u32);
    }
    out
}

#[test]
fn sampling_with_the_kv_cache_is_the_forward_pass() {
    for tied in [false, true] {
        let b = tiny_tied(3, tied);
        let g = Gguf::parse(b.as_slice()).unwrap();
        let s = Student::frozen(&g, DType::F64, &Device::Cpu, 16).unwrap();
        let prompts = vec![vec![1, 17, 5], vec![1, 60, 61], vec![2, 2, 2]];
        let got = s.sample(&prompts, 17, 0.0, &mut Noise::new(1)).unwrap();
        for (q, g) in prompts.iter().zip(&got) {
            assert_eq!(g, &greedy_uncached(&s, q, 17), "tied {tied}, prompt {q:?}");
        }
        // Too long for the positions bound, prompts of two lengths: errors.
        assert!(s.sample(&prompts, 18, 0.0, &mut Noise::new(1)).is_err());
        assert!(s.sample(&[vec![1], vec![1, 2]], 4, 0.0, &mut Noise::new(1)).is_err());
    }
}

#[test]
fn sampling_draws_from_the_softmax() {
    let b = tiny(5);
    let g = Gguf::parse(b.as_slice()).unwrap();
    let s = Student::frozen(&g, DType::F64, &Device::Cpu, 16).unwrap();
    let prompt = vec![1u32, 17];
    let temp = 1.5;
    let logits = s.forward(&prompt).unwrap().narrow(0, 1, 1).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
    let m = logits.iter().cloned().fold(f64::MIN, f64::max);
    let e: Vec<f64> = logits.iter().map(|l| ((l - m) / temp).exp()).collect();
    let z: f64 = e.iter().sum();
    let n = 6000;
    let got = s.sample(&vec![prompt.clone(); n], 3, temp, &mut Noise::new(7)).unwrap();
    let mut count = vec![0usize; logits.len()];
    for q in &got {
        count[q[2] as usize] += 1;
    }
    for (i, c) in count.iter().enumerate() {
        let (p, f) = (e[i] / z, *c as f64 / n as f64);
        // 5 standard deviations of a frequency over n draws.
        let sd = (p * (1.0 - p) / n as f64).sqrt();
        assert!((f - p).abs() <= 5.0 * sd + 1e-3, "token {i}: frequency {f} vs probability {p}");
    }
    // The same seed draws the same tokens; another seed others.
    let again = s.sample(&vec![prompt.clone(); 64], 8, temp, &mut Noise::new(7)).unwrap();
    assert_eq!(again, s.sample(&vec![prompt.clone(); 64], 8, temp, &mut Noise::new(7)).unwrap());
    assert_ne!(again, s.sample(&vec![prompt; 64], 8, temp, &mut Noise::new(8)).unwrap());
}

/// A low-rank student (`lowrank` without `--merge`) trains as factors: its forward pass is the
/// merged file's, the gradients are the factors', and the output keeps them (pith loads it).
#[test]
fn a_factored_student_trains_its_factors() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let teacher = with_vocab(p, "t.gguf", 128, 0, 1);
    let student = with_vocab(p, "s.gguf", 96, 0, 2);
    let text = word_text(p);
    let (factored, merged) = (p.join("lr.gguf"), p.join("lr-merged.gguf"));
    for (out, merge) in [(&factored, false), (&merged, true)] {
        let o = Command::new(env!("CARGO_BIN_EXE_pith-compress"))
            .arg("lowrank")
            .arg(&student)
            .arg(out)
            .args(["-f"])
            .arg(&text)
            .args(["--rank", "8", "-c", "16"])
            .args(if merge { &["--merge"][..] } else { &[][..] })
            .env("PITH_NO_PROGRESS", "1")
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let (fb, mb) = (std::fs::read(&factored).unwrap(), std::fs::read(&merged).unwrap());
    let (fg, mg) = (Gguf::parse(&fb).unwrap(), Gguf::parse(&mb).unwrap());
    assert!(fg.tensor("blk.0.ffn_up.weight_a").is_some() && fg.tensor("blk.0.ffn_up.weight").is_none());
    let fs = Student::from_gguf(&fg, DType::F64, &Device::Cpu, 16).unwrap();
    let ms = Student::from_gguf(&mg, DType::F64, &Device::Cpu, 16).unwrap();
    assert!(fs.factored() && !ms.factored());
    let a: Vec<f64> = fs.forward(&TOKS).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    let b: Vec<f64> = ms.forward(&TOKS).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    let scale = b.iter().fold(0f64, |m, v| m.max(v.abs()));
    for (x, y) in a.iter().zip(&b) {
        assert!((x - y).abs() < 1e-5 * scale, "factored {x} vs merged {y}");
    }
    // The gradients are the factors' (one step of the CPU teacher's logits).
    let tb = std::fs::read(&teacher).unwrap();
    let tg = Gguf::parse(&tb).unwrap();
    let tm = Model::from_gguf(&tg).unwrap();
    let s = Student::from_gguf(&fg, DType::F32, &Device::Cpu, 16).unwrap();
    let mut st = State::new(&tm, 16, 16).unwrap();
    let toks: Vec<u32> = TOKS.iter().map(|t| t % 8 + 3).collect();
    let tl = teacher_logits(&tm, &mut st, &Pool::single(), &toks[..toks.len() - 1], &s).unwrap();
    let (_, g) = grads(&s, &toks, &tl, 0.0, 1.0).unwrap();
    assert!(g.contains_key("blk.1.attn_v.weight_a") && g.contains_key("blk.1.attn_v.weight_b"));
    assert!(!g.contains_key("blk.1.attn_v.weight"));
    // The binary heals it as factors: the output is factored like its input and pith runs it.
    let out = p.join("healed.gguf");
    let args = |extra: &[&str]| -> Vec<std::ffi::OsString> {
        let mut v = io_args(&teacher, &factored, &text, &out);
        v.extend(["--tokens", "64", "--force"].iter().chain(extra).map(std::ffi::OsString::from));
        v
    };
    let call = |v: Vec<std::ffi::OsString>| run(&v.iter().map(|s| s.as_os_str()).collect::<Vec<_>>());
    let (ok, err) = call(args(&[]));
    assert!(ok, "{err}");
    let hb = std::fs::read(&out).unwrap();
    let hg = Gguf::parse(&hb).unwrap();
    for n in ["blk.0.attn_q.weight", "blk.1.ffn_down.weight"] {
        let (a, b) = (hg.tensor(&format!("{n}_a")).unwrap(), hg.tensor(&format!("{n}_b")).unwrap());
        let (fa, fb2) = (fg.tensor(&format!("{n}_a")).unwrap(), fg.tensor(&format!("{n}_b")).unwrap());
        assert_eq!((&a.dims, &b.dims), (&fa.dims, &fb2.dims), "{n}: the factors' shapes changed");
        assert!(hg.tensor(n).is_none(), "{n}: written dense");
        assert_ne!(a.data, fa.data, "{n}: factor A was not trained");
    }
    let hm = Model::from_gguf(&hg).unwrap();
    assert!(hm.unused.is_empty(), "{:?}", hm.unused);
    assert!(pith_logits(&hm, &toks).iter().all(|v| v.is_finite()));
    // QAT needs dense weights.
    std::fs::remove_file(&out).ok();
    let (ok, err) = call(args(&["--qat", "Q4_0"]));
    assert!(!ok && err.contains("factored") && err.contains("--merge"), "{err}");
    assert!(!out.exists(), "a refused run left {}", out.display());
}
