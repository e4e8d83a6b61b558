//! The canonical decode step of tiny llama-family models with random weights of every quantization
//! type: it tracks the float forward pass, the fast executor equals the reference executor bit for bit,
//! cache rows at and past the position never matter, and bad requests and files are clear errors.

mod common;

use common::*;
use verity_engine::{Executor, Mode};
use verity_llm::gguf::Gguf;
use verity_llm::reference::Reference;
use verity_llm::session::argmax;
use verity_llm::{Kv, LlmError, Session, Weights};

fn llama(types: [u32; 4], output: Option<u32>) -> Tiny {
    Tiny {
        arch: "llama",
        layers: 2,
        hidden: 256,
        heads: 4,
        kv_heads: 2,
        ffn: 512,
        vocab: 97,
        types,
        output,
        qkv_bias: false,
    }
}

/// Runs `steps` greedy steps of the canonical model and the float pass on the same tokens; returns the
/// largest logit error relative to the largest logit, and how often the argmaxes agree.
fn track(bytes: Vec<u8>, steps: usize) -> (f64, usize) {
    let g = Gguf::parse(bytes).unwrap();
    let step = verity_llm::compile(&g, 32).unwrap();
    let w = Weights::load(&g).unwrap();
    let mut r = Reference::new(&w);
    let mut s = Session::new(&step, 1);
    let ls = step.model.value(step.model.outputs[0].value).unwrap().scale;
    let (mut worst, mut agree, mut tok) = (0f64, 0, 1u32);
    for _ in 0..steps {
        let want = r.step(tok as usize);
        let got = s.feed(tok).unwrap();
        let max = want.iter().fold(0f64, |m, v| m.max(v.abs()));
        let err = got.iter().zip(&want).fold(0f64, |m, (&g, w)| {
            m.max((g as f64 * (-(ls as f64)).exp2() - w).abs())
        });
        worst = worst.max(err / max);
        let wa = argmax(&want) as usize;
        agree += (argmax(&got) as usize == wa) as usize;
        tok = wa as u32;
    }
    (worst, agree)
}

#[test]
fn every_quantization_type_tracks_the_float_model() {
    let cases: [([u32; 4], Option<u32>); 5] = [
        ([Q4_0, Q4_1, Q8_0, Q8_0], None),
        ([Q5_0, Q5_1, Q4_0, Q8_0], Some(Q6_K)),
        ([Q4_K, Q5_K, Q6_K, Q8_0], None),
        ([Q2_K, Q3_K, Q4_K, Q4_1], Some(Q8_0)),
        ([Q6_K, Q4_1, Q5_K, Q5_0], None),
    ];
    for (i, (types, output)) in cases.into_iter().enumerate() {
        let (err, agree) = track(tiny_model(&llama(types, output), 100 + i as u64), 12);
        eprintln!(
            "case {i}: max logit error {:.3}%, argmax agreement {agree}/12",
            err * 100.0
        );
        assert!(
            err < 0.05,
            "case {i} ({types:?}): logits off by {:.2}%",
            err * 100.0
        );
        assert!(agree >= 10, "case {i}: argmax agreed {agree}/12");
    }
}

#[test]
fn qwen2_with_biases_and_halves_rope_tracks_the_float_model() {
    let t = Tiny {
        arch: "qwen2",
        qkv_bias: true,
        ..llama([Q8_0, Q4_K, Q6_K, Q8_0], None)
    };
    let (err, agree) = track(tiny_model(&t, 7), 12);
    eprintln!(
        "qwen2: max logit error {:.3}%, argmax agreement {agree}/12",
        err * 100.0
    );
    assert!(err < 0.05 && agree >= 10, "{err} {agree}");
}

/// The compiler's calibration runs the float model a layer at a time over every position; its maxima are
/// the float model's token by token, to the bit (with and without a separate output matrix, with
/// biases and the other RoPE layout).
#[test]
fn layer_by_layer_calibration_gives_the_token_by_token_maxima() {
    for (i, t) in [
        llama([Q4_0, Q4_1, Q8_0, Q8_0], None),
        llama([Q5_0, Q5_1, Q4_0, Q8_0], Some(Q6_K)),
        qwen_tiny(),
    ]
    .iter()
    .enumerate()
    {
        let g = Gguf::parse(tiny_model(t, 40 + i as u64)).unwrap();
        let w = Weights::load(&g).unwrap();
        let tokens: Vec<usize> = (0..20).map(|k| (k * 37 + 5) % 97).collect();
        let mut r = Reference::new(&w);
        for &tok in &tokens {
            r.step(tok);
        }
        let m = verity_llm::reference::calibrate(&w, &tokens);
        assert_eq!(format!("{m:?}"), format!("{:?}", r.maxima), "case {i}");
        assert!(m.logits > 0.0 && m.scores > 0.0, "case {i}: {m:?}");
    }
}

#[test]
fn fast_and_reference_executors_agree_bit_for_bit() {
    let g = Gguf::parse(tiny_model(&llama([Q4_K, Q4_1, Q6_K, Q8_0], None), 3)).unwrap();
    let step = verity_llm::compile(&g, 16).unwrap();
    let mut s = Session::new(&step, 1);
    let reference = Executor::new(&step.model, Mode::Reference);
    let two = Executor::new(&step.model, Mode::Fast { threads: 2 });
    let mut tok = 1;
    for _ in 0..6 {
        let inputs = s.inputs(tok);
        let want = reference.run(inputs.clone()).unwrap();
        assert_eq!(two.run(inputs).unwrap(), want);
        let logits = s.feed(tok).unwrap();
        assert_eq!(logits, want[0]);
        tok = argmax(&logits);
    }
}

#[test]
fn cache_rows_at_and_after_the_position_are_ignored() {
    let g = Gguf::parse(tiny_model(&llama([Q8_0, Q4_0, Q4_1, Q8_0], None), 5)).unwrap();
    let step = verity_llm::compile(&g, 16).unwrap();
    let exec = Executor::new(&step.model, Mode::Fast { threads: 1 });
    let mut s = Session::new(&step, 1);
    for t in [1, 5, 9] {
        s.feed(t).unwrap();
    }
    let inputs = s.inputs(11);
    let want = exec.run(inputs.clone()).unwrap();
    // garbage in every row from position 3 on, in every cache
    let (hd, t) = (step.hp.head_dim, step.context - 1);
    let mut rng = Rng(9);
    let mut noisy = inputs.clone();
    for cache in noisy.iter_mut().skip(2) {
        for h in 0..step.hp.kv_heads {
            for p in 3..t {
                for j in 0..hd {
                    cache[(p * step.hp.kv_heads + h) * hd + j] = (rng.next_u64() as i32) >> 8;
                }
            }
        }
    }
    assert_eq!(exec.run(noisy).unwrap(), want);
    // a row before the position does matter
    let mut changed = inputs;
    changed[2][hd] += 1 << 24;
    assert_ne!(exec.run(changed).unwrap()[0], want[0]);
}

#[test]
fn a_generation_is_the_same_every_time() {
    let g = Gguf::parse(tiny_model(&llama([Q4_0, Q4_0, Q4_0, Q8_0], None), 11)).unwrap();
    let step = verity_llm::compile(&g, 16).unwrap();
    let run = |threads| {
        let mut s = Session::new(&step, threads);
        let mut tok = 1;
        let mut all = Vec::new();
        for _ in 0..10 {
            let l = s.feed(tok).unwrap();
            tok = argmax(&l);
            all.push(l);
        }
        all
    };
    let first = run(1);
    assert_eq!(run(2), first);
    // and recompiling gives the same model
    let again = verity_llm::compile(&g, 16).unwrap();
    assert_eq!(
        verity_engine::vty::model_id(&again.model),
        verity_engine::vty::model_id(&step.model)
    );
}

#[test]
fn requests_past_the_context_or_vocabulary_are_refused() {
    let g = Gguf::parse(tiny_model(&llama([Q8_0, Q8_0, Q8_0, Q8_0], None), 2)).unwrap();
    let step = verity_llm::compile(&g, 4).unwrap();
    let mut s = Session::new(&step, 1);
    let e = s.feed(97).unwrap_err();
    assert!(
        matches!(e, LlmError::Request(_)) && e.to_string().contains("vocabulary"),
        "{e}"
    );
    for t in 0..4 {
        s.feed(t).unwrap();
    }
    let e = s.feed(0).unwrap_err();
    assert!(
        e.to_string().contains("context of 4 positions is full"),
        "{e}"
    );
}

#[test]
fn unsupported_architectures_and_missing_tensors_are_named() {
    let t = Tiny {
        arch: "gemma",
        ..llama([Q8_0; 4], None)
    };
    let g = Gguf::parse(tiny_model(&t, 1)).unwrap();
    let e = verity_llm::compile(&g, 8).unwrap_err().to_string();
    assert!(e.contains("gemma") && e.contains("llama"), "{e}");
    // a file without its down projections
    let mut bytes = tiny_model(&llama([Q8_0; 4], None), 1);
    let at = bytes
        .windows(14)
        .position(|w| w == b"blk.1.ffn_down")
        .unwrap();
    bytes[at + 10..at + 14].copy_from_slice(b"xxxx");
    let g = Gguf::parse(bytes).unwrap();
    let e = verity_llm::compile(&g, 8).unwrap_err().to_string();
    assert!(
        e.contains("blk.1.ffn_down.weight") && e.contains("missing"),
        "{e}"
    );
}

#[test]
fn the_context_a_step_is_compiled_for_does_not_change_its_bits() {
    let g = Gguf::parse(tiny_model(&llama([Q4_K, Q8_0, Q4_0, Q8_0], None), 13)).unwrap();
    let run = |context| {
        let step = verity_llm::compile(&g, context).unwrap();
        let mut s = Session::new(&step, 1);
        let mut tok = 1;
        (0..12)
            .map(|_| {
                let l = s.feed(tok).unwrap();
                tok = argmax(&l);
                l
            })
            .collect::<Vec<_>>()
    };
    let small = run(12);
    assert_eq!(run(300), small);
    assert_eq!(run(2048), small);
}

#[test]
fn prefill_chunks_give_the_bits_of_single_steps() {
    // llama (adjacent RoPE pairs) and qwen2 (halves, QKV biases), 4-bit with offsets and 8-bit
    let qwen = qwen_tiny();
    for (t, seed) in [(llama([Q4_0, Q4_1, Q8_0, Q8_0], None), 21), (qwen, 22)] {
        let g = Gguf::parse(tiny_model(&t, seed)).unwrap();
        let step = verity_llm::compile_with(&g, 48, 8).unwrap();
        assert!(step.variants.iter().any(|v| v.rows == 8));
        // 40 positions, then 6 steps: past the first cache length (32), so two lengths of step and
        // of chunk serve the generation
        assert_eq!(verity_llm::step::cache_buckets(47), [32, 47]);
        let prompt: Vec<u32> = (0..40).map(|i| (i * 37 + 5) % 97).collect();
        // step by step: the last prompt position's logits, then a greedy continuation
        let steps = {
            let mut s = Session::new(&step, 1);
            let mut l = Vec::new();
            for &t in &prompt {
                l = s.feed(t).unwrap();
            }
            continue_greedy(&mut s, l)
        };
        for threads in [1, 2] {
            // the whole prompt in five chunks of 8
            let mut s = Session::new(&step, threads);
            let l = s.prefill(&prompt).unwrap();
            assert_eq!(s.pos(), prompt.len());
            assert_eq!(continue_greedy(&mut s, l), steps, "{} threads", threads);
            // from a later position: three steps, then chunks over the rest (the last one 5 real
            // rows and 3 padding rows)
            let mut s = Session::new(&step, threads);
            for &t in &prompt[..3] {
                s.feed(t).unwrap();
            }
            let l = s.prefill(&prompt[3..]).unwrap();
            assert_eq!(continue_greedy(&mut s, l), steps);
        }
        // a prompt that would pass the context is refused before anything runs
        let mut s = Session::new(&step, 1);
        let long: Vec<u32> = (0..49).map(|i| i % 97).collect();
        let e = s.prefill(&long).unwrap_err().to_string();
        assert!(e.contains("context of 48 positions is full"), "{e}");
        assert_eq!(s.pos(), 0);
        let e = s.prefill(&[3, 97]).unwrap_err().to_string();
        assert!(e.contains("outside the vocabulary"), "{e}");
        assert_eq!(s.pos(), 0);
    }
}

/// A qwen2 model (RoPE halves, QKV biases) of 4-bit blocks with offsets, K-quants and 8-bit blocks.
fn qwen_tiny() -> Tiny {
    Tiny {
        arch: "qwen2",
        qkv_bias: true,
        ..llama([Q4_1, Q5_K, Q8_0, Q4_0], Some(Q6_K))
    }
}

/// The logits `first` and those of 6 greedy steps after it.
fn continue_greedy(s: &mut Session, first: Vec<i32>) -> Vec<Vec<i32>> {
    let mut all = vec![first];
    for _ in 0..6 {
        let tok = argmax(all.last().unwrap());
        all.push(s.feed(tok).unwrap());
    }
    all
}

#[test]
fn interleaved_and_rewound_generations_give_the_bits_of_fresh_ones() {
    // what a node's scheduler does: several generations on one session, their caches swapped in
    // turn, and a new prompt continuing from the shared prefix of a kept cache
    let g = Gguf::parse(tiny_model(&llama([Q4_0, Q4_1, Q8_0, Q8_0], None), 23)).unwrap();
    let step = verity_llm::compile_with(&g, 48, 8).unwrap();
    let a: Vec<u32> = (0..37).map(|i| (i * 37 + 5) % 97).collect();
    let mut b = a[..20].to_vec();
    b.extend((0..9).map(|i| (i * 11 + 2) % 97));
    let fresh = |p: &[u32]| {
        let mut s = Session::new(&step, 1);
        let l = s.prefill(p).unwrap();
        continue_greedy(&mut s, l)
    };
    let (want_a, want_b) = (fresh(&a), fresh(&b));
    // a and b interleaved a chunk / a token at a time on one session
    let mut s = Session::new(&step, 1);
    let (mut ka, mut kb) = (Kv::new(&step), Kv::new(&step));
    let mut got: [Vec<Vec<i32>>; 2] = [Vec::new(), Vec::new()];
    let mut next = [0usize, 0];
    for _ in 0..12 {
        for (j, (kv, p)) in [(&mut ka, &a), (&mut kb, &b)].into_iter().enumerate() {
            s.swap_kv(kv);
            if next[j] < p.len() {
                let n = (p.len() - next[j]).min(8);
                let l = s.prefill(&p[next[j]..next[j] + n]).unwrap();
                next[j] += n;
                if next[j] == p.len() {
                    got[j].push(l);
                }
            } else if got[j].len() < 7 {
                let tok = argmax(got[j].last().unwrap());
                got[j].push(s.feed(tok).unwrap());
            }
            s.swap_kv(kv);
        }
    }
    assert_eq!(got[0], want_a, "a, interleaved");
    assert_eq!(got[1], want_b, "b, interleaved");
    // b again from a's kept cache: rewound to their 20 shared positions, then only b's rest
    s.swap_kv(&mut ka);
    s.rewind(20);
    assert_eq!(s.pos(), 20);
    let l = s.prefill(&b[20..]).unwrap();
    assert_eq!(continue_greedy(&mut s, l), want_b, "b from a's prefix");
    // rewinding never moves forward
    s.rewind(1000);
    assert_eq!(s.pos(), b.len() + 6);
    // a session beside it (sharing its packed weights), on 2 threads then 1: the same bits
    let mut t = s.beside(2);
    let mut kv = Kv::new(&step);
    t.swap_kv(&mut kv);
    let l = t.prefill(&b).unwrap();
    t.set_threads(1);
    assert_eq!(continue_greedy(&mut t, l), want_b, "b beside");
}

#[test]
fn several_generations_in_one_step_give_the_bits_of_each_alone() {
    // what a node's scheduler does with concurrent requests: one run of a several-generation
    // variant for all of them, each at its own position over its own cache, padding rows past them
    let qwen = qwen_tiny();
    for (t, seed) in [(llama([Q4_0, Q4_1, Q8_0, Q8_0], None), 24), (qwen, 25)] {
        let g = Gguf::parse(tiny_model(&t, seed)).unwrap();
        let step = verity_llm::compile_with(&g, 48, 8).unwrap();
        assert!(step.variants.iter().any(|v| v.sequences && v.rows == 8));
        // prompts of 1 to 33 positions: their continuations cross the first cache length (32)
        let prompts: Vec<Vec<u32>> = [1usize, 9, 30, 33, 17, 5, 26, 12, 2]
            .iter()
            .enumerate()
            .map(|(j, &n)| {
                (0..n as u32)
                    .map(|i| (i * 31 + 7 * j as u32 + 3) % 97)
                    .collect()
            })
            .collect();
        let alone: Vec<Vec<Vec<i32>>> = prompts
            .iter()
            .map(|p| {
                let mut s = Session::new(&step, 1);
                let l = s.prefill(p).unwrap();
                continue_greedy(&mut s, l)
            })
            .collect();
        for n in [2usize, 3, 5, 8] {
            let s = Session::new(&step, 1);
            assert_eq!(s.batch_rows(), 8);
            let mut kvs: Vec<Kv> = Vec::new();
            let mut got: Vec<Vec<Vec<i32>>> = Vec::new();
            for p in &prompts[..n] {
                let mut one = Session::new(&step, 1);
                let l = one.prefill(p).unwrap();
                let mut kv = Kv::new(&step);
                one.swap_kv(&mut kv);
                kvs.push(kv);
                got.push(vec![l]);
            }
            for _ in 0..6 {
                let tokens: Vec<u32> = got.iter().map(|g| argmax(g.last().unwrap())).collect();
                let mut refs: Vec<&mut Kv> = kvs.iter_mut().collect();
                let logits = s.feed_many(&mut refs, &tokens).unwrap().unwrap();
                for (g, l) in got.iter_mut().zip(logits) {
                    g.push(l);
                }
            }
            assert_eq!(got, alone[..n].to_vec(), "{n} generations");
            for (kv, p) in kvs.iter().zip(&prompts) {
                assert_eq!(kv.pos(), p.len() + 6);
            }
        }
        // more generations than a variant holds: none runs (the caller feeds them one by one)
        let s = Session::new(&step, 1);
        let mut kvs: Vec<Kv> = (0..9).map(|_| Kv::new(&step)).collect();
        let mut refs: Vec<&mut Kv> = kvs.iter_mut().collect();
        assert!(s.feed_many(&mut refs, &[1; 9]).is_none());
        // a refused token: an error, and no generation moved
        let mut refs: Vec<&mut Kv> = kvs.iter_mut().take(2).collect();
        let e = s.feed_many(&mut refs, &[1, 97]).unwrap().unwrap_err();
        assert!(e.to_string().contains("outside the vocabulary"), "{e}");
        assert!(kvs.iter().all(|k| k.pos() == 0));
    }
}
