//! Reading an ONNX file without holding its weights twice.
//!
//! Decoding a whole `.onnx` file copies every initializer's bytes into the protobuf message, and the
//! front end then copies them again into its tensors: a peak of twice the weights (three times with the
//! file's bytes). Here the file is scanned instead: every field is copied but the `raw_data` of the
//! graph's large initializers, which become references to where those bytes lie in the file itself
//! (ONNX's external-data form: `location`, `offset`, `length`), read one tensor at a time when the
//! front end builds it. The message decoded from the rest is the same model.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use tract_onnx::pb::ModelProto;
use tract_onnx::prelude::{Framework, TractResult};

use crate::CompileError;

/// Initializers with fewer bytes of `raw_data` stay in the message.
const KEEP_BELOW: u64 = 1 << 16;

/// `ModelProto.graph`, `GraphProto.initializer`, `TensorProto.raw_data`, `.external_data`,
/// `.data_location`; `StringStringEntryProto.key`, `.value`.
const MODEL_GRAPH: u64 = 7;
const GRAPH_INITIALIZER: u64 = 5;
const TENSOR_RAW_DATA: u64 = 9;
const TENSOR_EXTERNAL_DATA: u64 = 13;
const TENSOR_DATA_LOCATION: u64 = 14;
const ENTRY_KEY: u64 = 1;
const ENTRY_VALUE: u64 = 2;
/// `TensorProto.DataLocation.EXTERNAL`.
const EXTERNAL: u64 = 1;

/// The model of the ONNX file at `path` with its large initializers' bytes left in the file, and the
/// directory to resolve them from (the file's own, canonical; `None`, and every initializer kept in
/// the message, when its path is not UTF-8, which the front end's external data needs). The front end
/// must read them with [`FileData`].
pub fn proto_for_path(path: &Path) -> Result<(ModelProto, Option<String>), CompileError> {
    let bad = |e: String| CompileError::Onnx(format!("reading {}: {e}", path.display()));
    let path = path.canonicalize().map_err(|e| bad(e.to_string()))?;
    let dir = path.parent().and_then(|d| d.to_str()).map(str::to_string);
    let location = match (path.file_name().and_then(|n| n.to_str()), &dir) {
        (Some(n), Some(_)) => Some(n.as_bytes().to_vec()),
        _ => None,
    };
    let file = std::fs::File::open(&path).map_err(|e| bad(e.to_string()))?;
    let len = file.metadata().map_err(|e| bad(e.to_string()))?.len();
    let mut r = Scanner {
        file: std::io::BufReader::with_capacity(1 << 16, file),
        at: 0,
    };
    let mut out = Vec::new();
    let location = location.as_deref();
    r.message(len, &mut out, &mut |r, field, size, out| {
        if field != MODEL_GRAPH {
            return Ok(false);
        }
        let mut graph = Vec::new();
        r.message(size, &mut graph, &mut |r, field, size, graph| {
            if field != GRAPH_INITIALIZER {
                return Ok(false);
            }
            let tensor = r.tensor(size, location)?;
            put_len(graph, GRAPH_INITIALIZER, &tensor);
            Ok(true)
        })?;
        put_len(out, MODEL_GRAPH, &graph);
        Ok(true)
    })
    .map_err(bad)?;
    let proto = tract_onnx::onnx()
        .proto_model_for_read(&mut std::io::Cursor::new(out))
        .map_err(|e| bad(format!("not an ONNX model: {e:#}")))?;
    Ok((proto, dir))
}

/// Reads external tensor data with plain reads (through the page cache, not mapped into the
/// process), checking the range against the file's size.
pub struct FileData;

impl tract_onnx::data_resolver::ModelDataResolver for FileData {
    fn read_bytes_from_path(
        &self,
        buf: &mut Vec<u8>,
        p: &Path,
        offset: usize,
        length: Option<usize>,
    ) -> TractResult<()> {
        let mut f = std::fs::File::open(p)?;
        let size = f.metadata()?.len();
        let offset = offset as u64;
        let length = match length {
            Some(l) => l as u64,
            None => size.saturating_sub(offset),
        };
        if offset.checked_add(length).is_none_or(|end| end > size) {
            return Err(tract_onnx::prelude::TractError::msg(format!(
                "external data at {offset}..+{length} lies past the end of {} ({size} bytes)",
                p.display()
            )));
        }
        f.seek(SeekFrom::Start(offset))?;
        let start = buf.len();
        buf.resize(start + length as usize, 0);
        f.read_exact(&mut buf[start..])?;
        Ok(())
    }
}

/// A protobuf reader over the file that knows its position.
struct Scanner {
    file: std::io::BufReader<std::fs::File>,
    at: u64,
}

/// Called on each length-delimited field of a message (`field`, its size, the output): `true` if it
/// wrote the field itself, `false` to have it copied.
type OnField<'a> = dyn FnMut(&mut Scanner, u64, u64, &mut Vec<u8>) -> Result<bool, String> + 'a;

impl Scanner {
    fn byte(&mut self) -> Result<u8, String> {
        let mut b = [0u8];
        self.file
            .read_exact(&mut b)
            .map_err(|_| "the file ends inside a message".to_string())?;
        self.at += 1;
        Ok(b[0])
    }

    fn varint(&mut self) -> Result<u64, String> {
        let mut v = 0u64;
        for i in 0..10 {
            let b = self.byte()?;
            v |= ((b & 0x7f) as u64) << (7 * i);
            if b < 0x80 {
                return Ok(v);
            }
        }
        Err("a varint longer than 10 bytes".into())
    }

    fn copy(&mut self, n: u64, out: &mut Vec<u8>) -> Result<(), String> {
        let start = out.len();
        let n = usize::try_from(n).map_err(|_| "a field too large".to_string())?;
        out.resize(start + n, 0);
        self.file
            .read_exact(&mut out[start..])
            .map_err(|_| "the file ends inside a field".to_string())?;
        self.at += n as u64;
        Ok(())
    }

    fn skip(&mut self, n: u64) -> Result<(), String> {
        let n = i64::try_from(n).map_err(|_| "a field too large".to_string())?;
        self.file
            .seek_relative(n)
            .map_err(|e| format!("seeking: {e}"))?;
        self.at += n as u64;
        Ok(())
    }

    /// The fields of a message of `size` bytes copied to `out`, but those `on` writes itself.
    fn message(
        &mut self,
        size: u64,
        out: &mut Vec<u8>,
        on: &mut OnField<'_>,
    ) -> Result<(), String> {
        let end = self.at.checked_add(size).ok_or("a message too large")?;
        while self.at < end {
            let key = self.varint()?;
            let (field, wire) = (key >> 3, key & 7);
            if wire == 2 {
                let n = self.varint()?;
                if self.at.checked_add(n).is_none_or(|e| e > end) {
                    return Err("a field runs past its message".into());
                }
                if !on(self, field, n, out)? {
                    put_varint(out, key);
                    put_varint(out, n);
                    self.copy(n, out)?;
                }
                continue;
            }
            put_varint(out, key);
            match wire {
                0 => {
                    let v = self.varint()?;
                    put_varint(out, v);
                }
                1 => self.copy(8, out)?,
                5 => self.copy(4, out)?,
                _ => return Err(format!("unsupported wire type {wire}")),
            }
        }
        if self.at != end {
            return Err("a field runs past its message".into());
        }
        Ok(())
    }

    /// An initializer (a `TensorProto` of `size` bytes) with a large `raw_data` replaced by a reference
    /// to where it lies in the file (`location`; copied as it is without one).
    fn tensor(&mut self, size: u64, location: Option<&[u8]>) -> Result<Vec<u8>, String> {
        let mut t = Vec::new();
        let mut data = None;
        let mut external = false;
        self.message(size, &mut t, &mut |r, field, n, _| {
            external |= field == TENSOR_EXTERNAL_DATA;
            if field == TENSOR_RAW_DATA && n >= KEEP_BELOW && data.is_none() && location.is_some() {
                data = Some((r.at, n));
                r.skip(n)?;
                return Ok(true);
            }
            Ok(false)
        })?;
        if let (Some((offset, n)), Some(location)) = (data, location) {
            if external {
                return Err("an initializer has both raw data and external data".into());
            }
            for (key, value) in [
                (&b"location"[..], location.to_vec()),
                (b"offset", offset.to_string().into_bytes()),
                (b"length", n.to_string().into_bytes()),
            ] {
                let mut entry = Vec::new();
                put_len(&mut entry, ENTRY_KEY, key);
                put_len(&mut entry, ENTRY_VALUE, &value);
                put_len(&mut t, TENSOR_EXTERNAL_DATA, &entry);
            }
            put_varint(&mut t, TENSOR_DATA_LOCATION << 3);
            put_varint(&mut t, EXTERNAL);
        }
        Ok(t)
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_len(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
    put_varint(out, field << 3 | 2);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::pb::tensor_proto::DataLocation;

    fn fixture(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../fixtures")
            .join(name)
    }

    /// The scanned message is the decoded file but for its large initializers' bytes, which it points
    /// to where they lie in the file.
    #[test]
    fn large_initializers_point_into_the_file() {
        for name in ["mlp.onnx", "embed-mini/model.onnx"] {
            let path = fixture(name);
            let full = tract_onnx::onnx()
                .proto_model_for_path(&path)
                .expect("decodes");
            let (lean, dir) = proto_for_path(&path).expect("scans");
            let dir = dir.expect("a UTF-8 path");
            assert_eq!(
                Path::new(&dir),
                path.canonicalize().unwrap().parent().unwrap()
            );
            let bytes = std::fs::read(&path).unwrap();
            let (fg, lg) = (full.graph.as_ref().unwrap(), lean.graph.as_ref().unwrap());
            assert_eq!(fg.node, lg.node);
            assert_eq!((&fg.input, &fg.output), (&lg.input, &lg.output));
            assert_eq!(fg.initializer.len(), lg.initializer.len());
            let mut moved = 0;
            for (f, l) in fg.initializer.iter().zip(&lg.initializer) {
                assert_eq!(
                    (&f.name, &f.dims, f.data_type),
                    (&l.name, &l.dims, l.data_type)
                );
                if (f.raw_data.len() as u64) < KEEP_BELOW {
                    assert_eq!(f, l);
                    continue;
                }
                moved += 1;
                assert!(l.raw_data.is_empty());
                assert_eq!(l.data_location, Some(DataLocation::External as i32));
                let entry = |k: &str| {
                    let e = l.external_data.iter().find(|e| e.key == k).expect("entry");
                    e.value.clone()
                };
                let file = path.file_name().unwrap().to_str().unwrap();
                assert_eq!(entry("location"), file);
                let at: usize = entry("offset").parse().unwrap();
                let len: usize = entry("length").parse().unwrap();
                assert_eq!(&bytes[at..at + len], &f.raw_data[..], "{}", f.name);
            }
            assert!(moved > 0, "{name} has no large initializer");
        }
    }

    /// A file cut anywhere, or with a length running past its message, is refused with a sentence.
    #[test]
    fn broken_files_are_refused() {
        let bytes = std::fs::read(fixture("mlp.onnx")).unwrap();
        let dir = tempfile_dir();
        let p = dir.join("cut.onnx");
        for cut in [1, 7, 100, bytes.len() / 2, bytes.len() - 3] {
            std::fs::write(&p, &bytes[..cut]).unwrap();
            let e = proto_for_path(&p).expect_err("a cut file");
            assert!(e.to_string().contains("cut.onnx"), "{e}");
        }
        // a graph field claiming more bytes than the file has
        std::fs::write(&p, [MODEL_GRAPH as u8 * 8 + 2, 0xff, 0x7f, 1, 2, 3]).unwrap();
        let e = proto_for_path(&p).expect_err("an overlong field");
        assert!(e.to_string().contains("past"), "{e}");
        std::fs::write(&p, b"not an onnx file at all, only some text").unwrap();
        assert!(proto_for_path(&p).is_err());
        std::fs::remove_dir_all(&dir).ok();
    }

    /// A file whose name is not UTF-8 (which external data cannot name) keeps its weights in the
    /// message and imports as any other.
    #[cfg(unix)]
    #[test]
    fn a_file_named_in_other_bytes_keeps_its_weights_inline() {
        use std::os::unix::ffi::OsStrExt;
        let dir = tempfile_dir().join("named");
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(std::ffi::OsStr::from_bytes(b"m\xff.onnx"));
        std::fs::copy(fixture("mlp.onnx"), &p).unwrap();
        let (proto, _) = proto_for_path(&p).expect("scans");
        let g = proto.graph.expect("graph");
        assert!(g
            .initializer
            .iter()
            .any(|t| t.raw_data.len() as u64 >= KEEP_BELOW));
        let opts = crate::import::ImportOptions::default();
        let a = crate::import::import_onnx_path(&p, &opts).expect("imports");
        let b = crate::import::import_onnx_path(&fixture("mlp.onnx"), &opts).expect("imports");
        assert_eq!(format!("{:?}", a.graph), format!("{:?}", b.graph));
        for (x, y) in a.graph.consts.iter().zip(&b.graph.consts) {
            assert_eq!(x.data.to_f64(), y.data.to_f64());
        }
        std::fs::remove_dir_all(&dir).ok();
    }

    /// External data is read within the file only.
    #[test]
    fn external_data_past_the_end_is_an_error() {
        use tract_onnx::data_resolver::ModelDataResolver;
        let p = fixture("mlp.onnx");
        let size = std::fs::metadata(&p).unwrap().len() as usize;
        let mut buf = Vec::new();
        FileData
            .read_bytes_from_path(&mut buf, &p, 10, Some(6))
            .expect("inside");
        assert_eq!(buf, std::fs::read(&p).unwrap()[10..16]);
        for (offset, len) in [(size - 2, Some(3)), (size + 1, None), (usize::MAX, Some(2))] {
            let mut buf = Vec::new();
            let e = FileData.read_bytes_from_path(&mut buf, &p, offset, len);
            assert!(e.is_err(), "{offset} {len:?}");
        }
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("verity-onnx-file-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}

#[cfg(test)]
mod shape_tests {
    use crate::import::{import_onnx_path, onnx_input_shapes, ImportOptions};
    use std::path::Path;

    /// The input shapes read from a file's graph are the imported model's, with symbolic dimensions
    /// as 1 or as given, for files with fixed, dynamic and external-data inputs.
    #[test]
    fn input_shapes_from_the_graph_are_the_imported_ones() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures");
        let given = ImportOptions {
            input_shapes: vec![("x".into(), vec![3, 8])],
            ..Default::default()
        };
        for name in [
            "mlp.onnx",
            "cnn.onnx",
            "dynamic_batch.onnx",
            "digits_external.onnx",
        ] {
            for opts in [ImportOptions::default(), given.clone()] {
                let path = dir.join(name);
                let Ok(imported) = import_onnx_path(&path, &opts) else {
                    // a shape given for another model's input: both refuse or both agree
                    continue;
                };
                let want: Vec<(String, Vec<usize>)> = imported
                    .graph
                    .inputs
                    .iter()
                    .map(|i| {
                        (
                            i.name.clone(),
                            i.shape.iter().map(|&d| d as usize).collect(),
                        )
                    })
                    .collect();
                let got = onnx_input_shapes(&path, &opts).expect("shapes");
                assert_eq!(got, want, "{name}");
            }
        }
        // the symbolic batch as 1, or as given
        let dynamic = dir.join("dynamic_batch.onnx");
        let shape =
            |o: &ImportOptions| onnx_input_shapes(&dynamic, o).expect("shapes")[0].1.clone();
        assert_eq!(
            (shape(&ImportOptions::default()), shape(&given)),
            (vec![1, 8], vec![3, 8])
        );
        let no_shape = dir.join("no_shape.onnx");
        let (a, b) = (
            onnx_input_shapes(&no_shape, &ImportOptions::default()),
            import_onnx_path(&no_shape, &ImportOptions::default()),
        );
        assert_eq!(a.is_err(), b.is_err(), "{a:?}");
    }
}
