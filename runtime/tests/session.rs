//! The embedding API (`pith::engine::{LoadedModel, Session}`) on the real default model: one
//! model shared by sessions on several threads, cancel from another thread within one token,
//! state save/restore continuing exactly, and the cost of binding the weights per call.

use pith::engine::{GenerateOptions, LoadOptions, LoadedModel, Session, Stop};
use pith::sampling::SamplerConfig;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

fn model() -> Arc<LoadedModel> {
    let path = pith_fetch::ensure_default_model().expect("the default model ($PITH_MODEL or the cache)");
    Arc::new(LoadedModel::open(path, LoadOptions { threads: 1, ..Default::default() }, |_| true).expect("load"))
}

fn greedy(n: usize) -> GenerateOptions {
    GenerateOptions {
        max_tokens: n,
        stop: Vec::new(),
        sampling: SamplerConfig { temperature: 0.0, ..Default::default() },
    }
}

#[test]
fn binding_per_call_is_cheap() {
    let m = model();
    let t = std::time::Instant::now();
    for _ in 0..20 {
        let b = m.bind().expect("bind");
        std::hint::black_box(&b);
    }
    let per = t.elapsed().as_secs_f64() * 1e3 / 20.0;
    eprintln!("parse + bind per generate call: {per:.3} ms");
    // A sanity bound only: the figure is printed, and a loaded machine inflates it.
    assert!(per < 100.0, "binding takes {per} ms per call");
}

#[test]
fn two_sessions_share_a_model_and_one_is_cancelled() {
    let m = model();
    let mut a = Session::new(m.clone(), 256, Some(1)).unwrap();
    let mut b = Session::new(m.clone(), 256, Some(1)).unwrap();
    let cancel = b.cancel_token();
    let pieces = Arc::new(AtomicUsize::new(0));
    let pb = pieces.clone();
    let tb = std::thread::spawn(move || {
        let g = b
            .generate("Once upon a time", &greedy(300), |_| {
                pb.fetch_add(1, Ordering::SeqCst);
                ControlFlow::Continue(())
            })
            .unwrap();
        (g, b)
    });
    let ta = std::thread::spawn(move || {
        let mut text = String::new();
        a.generate("The capital of France is", &greedy(6), |s| {
            text.push_str(s);
            ControlFlow::Continue(())
        })
        .unwrap();
        text
    });
    while pieces.load(Ordering::SeqCst) < 3 {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    cancel.cancel();
    let at_cancel = pieces.load(Ordering::SeqCst);
    let (g, _b) = tb.join().unwrap();
    assert_eq!(g.stop, Stop::Cancelled);
    assert!(pieces.load(Ordering::SeqCst) - at_cancel <= 1);
    assert!(ta.join().unwrap().starts_with(" Paris."));
}

#[test]
fn restored_state_continues_exactly() {
    let m = model();
    let sampling = SamplerConfig { temperature: 0.9, seed: 5, repeat_penalty: 1.1, ..Default::default() };
    let opts = |n| GenerateOptions { max_tokens: n, stop: Vec::new(), sampling: sampling.clone() };
    let collect = |s: &mut Session, n| {
        let mut t = String::new();
        s.generate("", &opts(n), |p| {
            t.push_str(p);
            ControlFlow::Continue(())
        })
        .unwrap();
        t
    };
    let mut a = Session::new(m.clone(), 128, Some(1)).unwrap();
    a.generate("Once upon a time", &opts(5), |_| ControlFlow::Continue(())).unwrap();
    let state = a.save_state();
    let original = collect(&mut a, 8);
    let mut b = Session::new(m.clone(), 128, Some(1)).unwrap();
    b.restore_state(&state).unwrap();
    assert_eq!(collect(&mut b, 8), original);
    // Corrupt states are refused.
    let mut bad = state.clone();
    bad[0] ^= 1;
    assert!(b.restore_state(&bad).is_err());
    assert!(b.restore_state(&state[..state.len() - 1]).is_err());
}

/// A session with a quantized KV cache saves and restores its blocks (continuing exactly);
/// restoring it into a session of other cache types is a clear error.
#[test]
fn quantized_cache_state_round_trips_and_types_must_match() {
    use pith::CacheType::{F16, Q4_0, Q8_0};
    let m = model();
    let collect = |s: &mut Session| {
        let mut t = String::new();
        s.generate("", &greedy(6), |p| {
            t.push_str(p);
            ControlFlow::Continue(())
        })
        .unwrap();
        t
    };
    let mut a = Session::with_cache_types(m.clone(), 128, Some(1), Q8_0, Q4_0).unwrap();
    assert_eq!(a.cache_types(), (Q8_0, Q4_0));
    a.generate("Once upon a time", &greedy(4), |_| ControlFlow::Continue(())).unwrap();
    let state = a.save_state();
    let original = collect(&mut a);
    let mut b = Session::with_cache_types(m.clone(), 128, Some(1), Q8_0, Q4_0).unwrap();
    b.restore_state(&state).unwrap();
    assert_eq!(collect(&mut b), original);
    let mut c = Session::with_cache_types(m, 128, Some(1), F16, F16).unwrap();
    let e = c.restore_state(&state).unwrap_err().to_string();
    assert!(e.contains("K q8_0, V q4_0") && e.contains("K f16, V f16"), "{e}");
    assert_eq!(c.n_past(), 0, "a refused state leaves the session as it was");
}

/// The model read into huge pages (the default) and mapped from the file hold the same bytes
/// and generate the same tokens; a bad file is the same named error either way.
#[test]
fn copied_and_mapped_weights_agree() {
    use pith::file::{MappedFile, WeightMemory};
    let path = pith_fetch::ensure_default_model().expect("the default model ($PITH_MODEL or the cache)");
    let copied = MappedFile::open_with(&path, WeightMemory::Copy).expect("copy");
    let mapped = MappedFile::open_with(&path, WeightMemory::Map).expect("map");
    assert_eq!(copied.memory(), WeightMemory::Copy);
    assert_eq!(mapped.memory(), WeightMemory::Map);
    assert!(copied.bytes() == mapped.bytes(), "the copy differs from the file");
    let text = |weights| {
        let m = LoadedModel::open(&path, LoadOptions { threads: 1, weights }, |_| true).expect("load");
        let mut s = Session::new(Arc::new(m), 64, Some(1)).expect("session");
        let mut text = String::new();
        s.generate("The capital of France is", &greedy(8), |t| {
            text.push_str(t);
            ControlFlow::Continue(())
        })
        .expect("generate");
        text
    };
    assert_eq!(text(WeightMemory::Copy), text(WeightMemory::Map));
    let dir = std::env::temp_dir().join(format!("pith-weight-memory-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let empty = dir.join("empty.gguf");
    std::fs::write(&empty, b"").expect("write");
    for memory in [WeightMemory::Copy, WeightMemory::Map] {
        for p in [empty.clone(), dir.join("missing.gguf"), dir.clone()] {
            let e = MappedFile::open_with(&p, memory).err().expect("a bad file is refused");
            assert!(e.to_string().contains(&p.display().to_string()), "{memory:?} {}: {e}", p.display());
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
