//! `pith-compress prune` on tiny random llama models: nothing removed keeps the outputs
//! exactly; the importance scores match a naive f64 reference; pruning a unit equals zeroing
//! its contribution; depth pruning equals the model without those layers; bad input.

use pith::gguf::Gguf;
use pith::model::{Logits, Model, State};
use pith::testing::{build, reference_forward, spm_vocab, RefStep, RefWeights, Rng, TinySpec};
use pith::{Pool, Precision};
use pith_kernels::GgmlType;
use pith_models::prune::{self, AlignedBytes, Importance, Keep, Shape, Width};
use std::process::Command;

fn spec(tied: bool, seed: u64) -> TinySpec {
    TinySpec { n_layer: 3, tied, seed, ..Default::default() }
}

fn chunks(n: usize, len: usize, n_vocab: usize) -> Vec<Vec<u32>> {
    let mut rng = Rng(7);
    (0..n).map(|_| (0..len).map(|_| (rng.next_u64() % n_vocab as u64) as u32).collect()).collect()
}

fn logits(bytes: &[u8], tokens: &[u32]) -> Vec<f32> {
    let g = Gguf::parse(bytes).unwrap();
    let m = Model::from_gguf(&g).unwrap();
    let mut s = State::new(&m, tokens.len(), tokens.len()).unwrap();
    s.set_precision(Precision::F32);
    m.forward(&mut s, &Pool::single(), tokens, Logits::From(0)).unwrap().to_vec()
}

fn shape_of(bytes: &[u8]) -> Shape {
    let g = Gguf::parse(bytes).unwrap();
    Shape::of(&Model::from_gguf(&g).unwrap().config, g.tensor("output.weight").is_none())
}

fn prune_bytes(bytes: &[u8], keep: &Keep, ty: GgmlType) -> AlignedBytes {
    let g = Gguf::parse(bytes).unwrap();
    let s = shape_of(bytes);
    AlignedBytes::from(prune::apply(&g, &s, keep, ty).unwrap())
}

fn aligned(bytes: Vec<u8>) -> AlignedBytes {
    let g = Gguf::parse(&bytes).unwrap();
    AlignedBytes::from(pith_models::prune::without_layers(&g, &[]))
}

#[test]
fn nothing_removed_keeps_the_outputs_exactly() {
    for tied in [false, true] {
        let (bytes, _) = build(&spec(tied, 3));
        let bytes = aligned(bytes);
        let s = shape_of(bytes.as_slice());
        let out = prune_bytes(bytes.as_slice(), &Keep::all(&s), GgmlType::F32);
        assert_eq!(shape_of(out.as_slice()), s);
        let toks = &chunks(1, 20, s.n_vocab)[0];
        let (a, b) = (logits(bytes.as_slice(), toks), logits(out.as_slice(), toks));
        assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()), "tied {tied}: logits differ");
    }
}

/// Activations of the naive f64 forward pass, for the reference scores.
struct RefActs {
    /// Per layer: residual entering it, per token; plus the final residual.
    resid: Vec<Vec<Vec<f64>>>,
    /// Normed vectors (attn and ffn norms of every layer, the output norm), per token.
    normed: Vec<Vec<f64>>,
    /// Per layer, per token, per head: the L2 norm of the head's attention output.
    head_norm: Vec<Vec<Vec<f64>>>,
    /// Per layer, per token: SwiGLU output.
    swiglu: Vec<Vec<Vec<f64>>>,
}

/// The activations of pith's naive f64 reference forward pass (`pith::testing`).
fn reference_acts(sp: &TinySpec, w: &RefWeights, tokens: &[u32]) -> RefActs {
    let hd = sp.head_dim();
    let mut acts = RefActs {
        resid: vec![Vec::new(); sp.n_layer + 1],
        normed: Vec::new(),
        head_norm: vec![Vec::new(); sp.n_layer],
        swiglu: vec![Vec::new(); sp.n_layer],
    };
    reference_forward(sp, w, tokens, &mut |step| match step {
        RefStep::Residual(l, x) => acts.resid[l].push(x.to_vec()),
        RefStep::Normed(x) => acts.normed.push(x.to_vec()),
        RefStep::Attention(l, att) => {
            acts.head_norm[l].push(att.chunks(hd).map(|h| h.iter().map(|v| v * v).sum::<f64>().sqrt()).collect())
        }
        RefStep::Gated(l, h) => acts.swiglu[l].push(h.to_vec()),
    });
    acts
}

/// The scores straight from their definitions: per chunk the mean over tokens, then the L2
/// norm over chunks; BI the mean over every token of 1 − cos.
fn reference_importance(sp: &TinySpec, w: &RefWeights, chunks: &[Vec<u32>]) -> Importance {
    let l2 = |per_chunk: Vec<Vec<f64>>| -> Vec<f64> {
        let n = per_chunk[0].len();
        (0..n).map(|i| per_chunk.iter().map(|c| c[i] * c[i]).sum::<f64>().sqrt()).collect()
    };
    let mean = |rows: &[Vec<f64>], f: &dyn Fn(f64) -> f64, n_tok: usize| -> Vec<f64> {
        let n = rows[0].len();
        (0..n).map(|i| rows.iter().map(|r| f(r[i])).sum::<f64>() / n_tok as f64).collect()
    };
    let acts: Vec<RefActs> = chunks.iter().map(|c| reference_acts(sp, w, c)).collect();
    let mut bi = vec![0.0; sp.n_layer];
    let mut n_bi = 0;
    for a in &acts {
        for t in 0..a.resid[0].len() {
            for (l, b) in bi.iter_mut().enumerate() {
                let (x, y) = (&a.resid[l][t], &a.resid[l + 1][t]);
                let dot: f64 = x.iter().zip(y).map(|(a, b)| a * b).sum();
                let nx = x.iter().map(|v| v * v).sum::<f64>().sqrt();
                let ny = y.iter().map(|v| v * v).sum::<f64>().sqrt();
                *b += 1.0 - dot / (nx * ny);
            }
            n_bi += 1;
        }
    }
    Importance {
        ffn: (0..sp.n_layer)
            .map(|l| l2(acts.iter().map(|a| mean(&a.swiglu[l], &|v| v.abs(), a.swiglu[l].len())).collect()))
            .collect(),
        heads: (0..sp.n_layer)
            .map(|l| l2(acts.iter().map(|a| mean(&a.head_norm[l], &|v| v, a.head_norm[l].len())).collect()))
            .collect(),
        embd: l2(acts.iter().map(|a| mean(&a.normed, &|v| v.abs(), a.resid[0].len())).collect()),
        block_influence: bi.iter().map(|b| b / n_bi as f64).collect(),
        chunks: chunks.len(),
        tokens: chunks.iter().map(Vec::len).sum(),
    }
}

fn close(what: &str, a: &[f64], b: &[f64], rel: f64) {
    assert_eq!(a.len(), b.len(), "{what}");
    let scale = b.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!((x - y).abs() <= rel * scale, "{what}[{i}]: pith {x} vs reference {y} (scale {scale})");
    }
}

#[test]
fn importance_matches_a_naive_reference() {
    for tied in [false, true] {
        let sp = spec(tied, 5);
        let (bytes, w) = build(&sp);
        let bytes = aligned(bytes);
        let g = Gguf::parse(bytes.as_slice()).unwrap();
        let m = Model::from_gguf(&g).unwrap();
        let cs = chunks(3, 12, sp.n_vocab);
        let got = prune::importance(&m, &Pool::new(2).unwrap(), &cs, Precision::F32).unwrap();
        let want = reference_importance(&sp, &w, &cs);
        for l in 0..sp.n_layer {
            close(&format!("ffn[{l}]"), &got.ffn[l], &want.ffn[l], 1e-3);
            close(&format!("heads[{l}]"), &got.heads[l], &want.heads[l], 1e-3);
        }
        close("embd", &got.embd, &want.embd, 1e-3);
        close("block influence", &got.block_influence, &want.block_influence, 1e-3);
        assert!(got.block_influence.iter().all(|&b| b > 1e-3), "{:?}", got.block_influence);
        assert_eq!((got.chunks, got.tokens), (3, 36));
    }
}

/// A copy of the model's reference weights with some FFN neurons' and GQA groups' outputs
/// zeroed (their `ffn_down` / `attn_output` columns): what pruning them must compute.
#[test]
fn pruning_ffn_neurons_and_groups_equals_zeroing_them() {
    let sp = spec(false, 9);
    let (bytes, _) = build(&sp);
    let bytes = aligned(bytes);
    let s = shape_of(bytes.as_slice());
    let g = Gguf::parse(bytes.as_slice()).unwrap();
    let m = Model::from_gguf(&g).unwrap();
    let cs = chunks(2, 16, sp.n_vocab);
    let imp = prune::importance(&m, &Pool::single(), &cs, Precision::F32).unwrap();
    let w = Width { ffn: Some(96), heads: Some(2), embd: None };
    let keep = prune::width_keep(&s, &imp, &w).unwrap();
    let out = prune_bytes(bytes.as_slice(), &keep, GgmlType::F32);
    let to = shape_of(out.as_slice());
    assert_eq!((to.n_ff, to.n_head, to.n_head_kv, to.n_embd), (96, 2, 1, 64));
    assert_eq!(to.params(), keep.shape(&s).params());
    // The kept units are the most important ones.
    for (l, lk) in keep.layers.iter().enumerate() {
        let min_kept = lk.ffn.iter().map(|&i| imp.ffn[l][i]).fold(f64::INFINITY, f64::min);
        let max_dropped = (0..s.n_ff).filter(|i| !lk.ffn.contains(i)).map(|i| imp.ffn[l][i]).fold(0.0, f64::max);
        assert!(min_kept >= max_dropped);
        let groups = imp.groups(l, s.n_head_kv);
        assert_eq!(lk.groups, vec![if groups[0] >= groups[1] { 0 } else { 1 }]);
    }
    // The same model with the dropped units' output columns zeroed, pruned with nothing removed.
    let mut b = pith_models::prune::without_layers(&g, &[]);
    let hd = s.head_dim;
    for t in b.tensors.iter_mut() {
        let Some((l, name)) = t.name.strip_prefix("blk.").and_then(|r| r.split_once('.')) else { continue };
        let lk = &keep.layers[l.parse::<usize>().unwrap()];
        let n_cols = t.dims[0] as usize;
        let dropped: Vec<usize> = match name {
            "ffn_down.weight" => (0..s.n_ff).filter(|i| !lk.ffn.contains(i)).collect(),
            "attn_output.weight" => (0..s.n_head)
                .filter(|h| !lk.groups.contains(&(h / (s.n_head / s.n_head_kv))))
                .flat_map(|h| h * hd..(h + 1) * hd)
                .collect(),
            _ => continue,
        };
        for row in t.data.chunks_exact_mut(n_cols * 4) {
            for &c in &dropped {
                row[c * 4..c * 4 + 4].copy_from_slice(&0f32.to_le_bytes());
            }
        }
    }
    let zeroed = AlignedBytes::from(b);
    let toks = &cs[0];
    let (a, z) = (logits(out.as_slice(), toks), logits(zeroed.as_slice(), toks));
    let scale = z.iter().fold(0f32, |m, v| m.max(v.abs()));
    for (x, y) in a.iter().zip(&z) {
        assert!((x - y).abs() <= 1e-4 * scale, "{x} vs {y}");
    }
}

#[test]
fn embedding_pruning_keeps_a_loadable_consistent_model() {
    for tied in [false, true] {
        let sp = spec(tied, 11);
        let (bytes, _) = build(&sp);
        let bytes = aligned(bytes);
        let s = shape_of(bytes.as_slice());
        let g = Gguf::parse(bytes.as_slice()).unwrap();
        let m = Model::from_gguf(&g).unwrap();
        let imp = prune::importance(&m, &Pool::single(), &chunks(2, 8, sp.n_vocab), Precision::F32).unwrap();
        let keep = prune::width_keep(&s, &imp, &Width { ffn: Some(64), heads: Some(2), embd: Some(48) }).unwrap();
        assert_eq!(keep.embd, prune::top_k(&imp.embd, 48));
        for ty in [GgmlType::F32, GgmlType::F16] {
            let out = prune_bytes(bytes.as_slice(), &keep, ty);
            let to = shape_of(out.as_slice());
            assert_eq!((to.n_embd, to.n_ff, to.n_head, to.n_head_kv, to.head_dim), (48, 64, 2, 1, 16));
            let l = logits(out.as_slice(), &[1, 2, 3]);
            assert!(l.iter().all(|v| v.is_finite()) && l.len() == 3 * sp.n_vocab);
        }
    }
}

#[test]
fn depth_pruning_is_the_model_without_those_layers() {
    let sp = spec(true, 13);
    let (bytes, _) = build(&sp);
    let bytes = aligned(bytes);
    let s = shape_of(bytes.as_slice());
    let g = Gguf::parse(bytes.as_slice()).unwrap();
    let out = prune_bytes(bytes.as_slice(), &prune::depth_keep(&s, &[1]), GgmlType::F32);
    let skip = AlignedBytes::from(prune::without_layers(&g, &[1]));
    assert_eq!(shape_of(out.as_slice()).n_layer, 2);
    let toks = [5u32, 9, 2, 40];
    assert_eq!(logits(out.as_slice(), &toks), logits(skip.as_slice(), &toks));
    let ppl = prune::skip_perplexities(&g, &Pool::single(), &chunks(2, 10, sp.n_vocab), |_| {}).unwrap();
    assert_eq!(ppl.len(), 3);
    assert!(ppl.iter().all(|p| p.is_finite() && *p > 1.0));
}

#[test]
fn shapes_counts_and_budgets() {
    // SmolLM2-135M's shape.
    let s = Shape {
        n_vocab: 49152,
        n_embd: 576,
        n_layer: 30,
        n_head: 9,
        n_head_kv: 3,
        head_dim: 64,
        n_ff: 1536,
        tied: true,
    };
    assert_eq!(s.params(), 134_515_008);
    assert_eq!(prune::parse_count("90M").unwrap(), 90_000_000);
    assert_eq!(prune::parse_count("1.5k").unwrap(), 1500);
    assert!(prune::parse_count("x").is_err() && prune::parse_count("-3M").is_err());
    let w = prune::width_for_budget(&s, 90_000_000).unwrap();
    let t = Shape { n_ff: w.ffn.unwrap(), n_embd: w.embd.unwrap(), ..s };
    assert!(t.params() <= 90_000_000 && t.params() > 80_000_000, "{}", t.describe());
    assert!(t.n_embd.is_multiple_of(32) && t.n_ff.is_multiple_of(32));
    let n = prune::depth_for_budget(&s, 90_000_000).unwrap();
    assert!(Shape { n_layer: 30 - n, ..s }.params() <= 90_000_000);
    assert!(Shape { n_layer: 31 - n, ..s }.params() > 90_000_000);
    // Whole GQA groups only; nothing grows or vanishes.
    for (w, msg) in [
        ("heads=4", "multiple of 3"),
        ("ffn=2000", "only 1536"),
        ("embd=0", "at least one"),
        ("ffn=x", "not a whole number"),
        ("foo=3", "unknown key"),
        ("", "nothing to prune"),
    ] {
        let e = Width::parse(w).and_then(|w| w.check(&s)).unwrap_err().to_string();
        assert!(e.contains(msg), "{w}: {e}");
    }
    assert!(Width::parse("heads=6,ffn=1024").unwrap().check(&s).is_ok());
}

// The binary on bad input: an error naming the problem, no output file.

const WORDS: [&str; 8] = ["the", "cat", "sat", "on", "mat", "a", "dog", "ran"];

fn tiny_with_vocab(dir: &std::path::Path) -> std::path::PathBuf {
    let vocab = spm_vocab(&WORDS, 0);
    let sp = TinySpec { n_vocab: vocab.len(), n_layer: 3, vocab: Some(vocab), ..Default::default() };
    let p = dir.join("in.gguf");
    std::fs::write(&p, build(&sp).0).unwrap();
    p
}

fn run(args: &[&std::ffi::OsStr]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_pith-compress"))
        .arg("prune")
        .args(args)
        .env("PITH_NO_PROGRESS", "1")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_binary_prunes_and_refuses_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let input = tiny_with_vocab(dir.path());
    let text: String = (0..400).map(|i| WORDS[(i * 7 + i / 3) % WORDS.len()]).collect::<Vec<_>>().join(" ");
    let calib = dir.path().join("calib.txt");
    std::fs::write(&calib, &text).unwrap();
    let empty = dir.path().join("empty.txt");
    std::fs::write(&empty, "  \n").unwrap();
    let out = dir.path().join("out.gguf");
    let o = |s: &str| std::ffi::OsString::from(s);
    let base = [input.as_os_str().to_owned(), out.as_os_str().to_owned(), o("-f"), calib.as_os_str().to_owned()];
    let with = |extra: &[&str]| -> Vec<std::ffi::OsString> {
        base.iter().cloned().chain(extra.iter().map(|s| o(s))).collect()
    };
    let call = |v: Vec<std::ffi::OsString>| run(&v.iter().map(|s| s.as_os_str()).collect::<Vec<_>>());

    // A dry run ranks and writes nothing.
    let (ok, stdout, err) = call(with(&["--depth", "1", "--dry-run", "-c", "16", "--ppl-chunks", "2"]));
    assert!(ok, "{err}");
    assert!(
        stdout.contains("BI") && stdout.contains("ppl w/o") && stdout.contains("to:   n_embd 64, 2 layers"),
        "{stdout}"
    );
    assert!(!out.exists());

    // Width pruning writes a model pith loads.
    let (ok, stdout, err) = call(with(&["--width", "ffn=64,heads=2", "-c", "16", "--type", "f16"]));
    assert!(ok, "{err}");
    assert!(stdout.contains("n_ff 64"), "{stdout}");
    let bytes = std::fs::read(&out).unwrap();
    let s = shape_of(aligned(bytes).as_slice());
    assert_eq!((s.n_ff, s.n_head), (64, 2));

    // Bad input: a clear error and nothing written (the existing file untouched, no temporaries).
    let before = std::fs::read(&out).unwrap();
    for (extra, msg) in [
        (vec!["--width", "heads=3", "--force"], "whole GQA groups of 2"),
        (vec!["--depth", "3", "--force"], "remove between 1 and 2"),
        (vec!["--width", "ffn=64"], "exists"),
        (vec!["--target-params", "10", "--force"], "too small"),
        (vec!["--width", "ffn=64", "-c", "100000", "--force"], "fewer than one chunk"),
    ] {
        let (ok, _, err) = call(with(&extra));
        assert!(!ok && err.contains(msg), "{extra:?}: {err}");
    }
    let (ok, _, err) = call(vec![
        input.as_os_str().to_owned(),
        out.as_os_str().to_owned(),
        o("-f"),
        empty.as_os_str().to_owned(),
        o("--width"),
        o("ffn=64"),
        o("--force"),
    ]);
    assert!(!ok && err.contains("empty"), "{err}");
    assert_eq!(std::fs::read(&out).unwrap(), before);
    let mut names: Vec<String> =
        std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    assert_eq!(names, ["calib.txt", "empty.txt", "in.gguf", "out.gguf"]);

    // A non-llama model.
    let mut b = pith::gguf::writer::GgufBuilder::new();
    b.kv("general.architecture", pith::gguf::writer::OwnedValue::String("gemma3".into()));
    let other = dir.path().join("gemma.gguf");
    std::fs::write(&other, b.to_bytes()).unwrap();
    let (ok, _, err) = call(vec![
        other.as_os_str().to_owned(),
        dir.path().join("o2.gguf").into_os_string(),
        o("-f"),
        calib.as_os_str().to_owned(),
        o("--depth"),
        o("1"),
    ]);
    assert!(!ok && err.contains("'gemma3'") && err.contains("llama models only"), "{err}");
    assert!(!dir.path().join("o2.gguf").exists());
}
