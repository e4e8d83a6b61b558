//! Compiler tests on the bundled fixtures: accuracy against tract and against the digits labels,
//! the effect of scale bits, and precise errors for bad models and calibration data.

use std::path::{Path, PathBuf};

use verity_compiler::{compile, CompileError, CompileOptions};
use verity_engine::io::{dequantize, quantize_inputs, tensor_from_npy, FloatTensor};
use verity_engine::{Executor, Mode};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures")
        .join(name)
}

fn read(name: &str) -> Vec<u8> {
    std::fs::read(fixture(name)).expect("fixture")
}

fn rows(t: FloatTensor, shape: &[usize]) -> Vec<Vec<FloatTensor>> {
    let n: usize = shape.iter().product();
    t.data
        .chunks(n)
        .map(|c| {
            vec![FloatTensor {
                shape: shape.to_vec(),
                data: c.to_vec(),
            }]
        })
        .collect()
}

#[test]
fn digits_classifier_keeps_its_accuracy() {
    let calib = tensor_from_npy(&read("digits.calibration.npy")).unwrap();
    let eval = tensor_from_npy(&read("digits.eval.npy")).unwrap();
    let labels = tensor_from_npy(&read("digits.eval_labels.npy")).unwrap();
    let opts = CompileOptions {
        calibration: Some(rows(calib, &[1, 64])),
        eval: Some(rows(eval.clone(), &[1, 64])),
        ..Default::default()
    };
    let (model, report) = compile(&read("digits.onnx"), &opts).unwrap();
    assert_eq!(report.samples, 450);
    let out = &report.outputs[0];
    assert!(out.top1_agreement.unwrap() >= 0.99, "{out:?}");
    assert!(out.max_abs_error < 1e-2, "{out:?}");
    // accuracy of the canonical model on the held-out labels, as scikit-learn measured it (0.971)
    let exec = Executor::new(&model, Mode::default());
    let scale = model.value(model.outputs[0].value).unwrap().scale;
    let mut correct = 0;
    for (x, y) in rows(eval, &[1, 64]).iter().zip(&labels.data) {
        let probs = dequantize(
            &exec.run(quantize_inputs(&model, x).unwrap()).unwrap()[0],
            scale,
        );
        let best = probs
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .unwrap()
            .0;
        correct += (best as f64 == *y) as usize;
    }
    let acc = correct as f64 / 450.0;
    assert!(acc >= 0.965, "canonical accuracy {acc}");
}

#[test]
fn fewer_scale_bits_cost_accuracy() {
    let onnx = read("mlp.onnx");
    let err = |bits: i8| {
        let opts = CompileOptions {
            scale_bits: bits,
            default_range: (0.0, 1.0),
            ..Default::default()
        };
        compile(&onnx, &opts).unwrap().1.outputs[0].max_abs_error
    };
    let (e6, e10, e16) = (err(6), err(10), err(16));
    assert!(e6 > e10 && e10 > e16, "errors {e6} {e10} {e16}");
    assert!(e16 < 1e-3);
}

#[test]
fn unsupported_ops_name_the_op_and_node() {
    match compile(&read("unsupported_op.onnx"), &CompileOptions::default()) {
        Err(CompileError::Unsupported { op, node, .. }) => {
            assert_eq!(node, "the_cosine");
            assert!(op.contains("Cos"), "{op}");
        }
        other => panic!("expected Unsupported, got {:?}", other.map(|_| ())),
    }
}

#[test]
fn bad_calibration_data_is_rejected() {
    let onnx = read("mlp.onnx");
    let wrong = CompileOptions {
        calibration: Some(vec![vec![FloatTensor {
            shape: vec![1, 10],
            data: vec![0.0; 10],
        }]]),
        ..Default::default()
    };
    assert!(
        matches!(compile(&onnx, &wrong), Err(CompileError::Calibration(m)) if m.contains("needs 784 values"))
    );
    let nan = CompileOptions {
        calibration: Some(vec![vec![FloatTensor {
            shape: vec![1, 784],
            data: vec![f64::NAN; 784],
        }]]),
        ..Default::default()
    };
    assert!(matches!(compile(&onnx, &nan), Err(CompileError::Calibration(m)) if m.contains("NaN")));
    assert!(matches!(
        compile(b"junk", &CompileOptions::default()),
        Err(CompileError::Onnx(_))
    ));
    let zero = CompileOptions {
        scale_bits: 0,
        ..Default::default()
    };
    assert!(compile(&onnx, &zero).is_err());
}

#[test]
fn random_calibration_is_seeded() {
    let onnx = read("transformer.onnx");
    let id = |seed: u64| {
        let (m, _) = compile(
            &onnx,
            &CompileOptions {
                seed,
                ..Default::default()
            },
        )
        .unwrap();
        verity_engine::vty::model_id(&m)
    };
    assert_eq!(id(7), id(7));
}
