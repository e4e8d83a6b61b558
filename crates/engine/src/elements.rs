//! A constant's elements in memory at the narrowest width that holds them (the width its file stores them
//! at: 4, 8, 16 or 32 bits), widened to `i32` only where something reads them as `i32`.
//!
//! The fast executor's prepared forms are made from the narrow elements: 8-bit matrices from their
//! [`Elements::bytes`], the others (convolution and block weights) through [`Elements::transient`],
//! which widens one constant at a time and keeps nothing; the reference executor widens a constant for
//! one node at a time the same way. A constant the fast executor reads as a slice (`&c.data[..]`:
//! biases, multipliers, tables) is widened once, on first read, and the `i32` copy kept beside the narrow
//! one. A language model's 4-bit block weights thus sit in memory at 4 bits, not 32.

use std::borrow::Cow;
use std::sync::{Arc, OnceLock};

use crate::vty::Width;

/// A constant's elements (see the module documentation). Cloning shares them.
#[derive(Clone)]
pub struct Elements(Arc<Stored>);

struct Stored {
    len: usize,
    narrow: Narrow,
    /// The `i32` elements: set at construction for 32-bit elements, else on first read as a slice.
    wide: OnceLock<Vec<i32>>,
}

enum Narrow {
    /// Two's-complement nibbles, two per byte, high nibble first.
    I4(Vec<u8>),
    I8(Vec<i8>),
    I16(Vec<i16>),
    /// Held in `wide`.
    I32,
}

impl Elements {
    /// Elements stored at 4 bits (`packed` as [`Width::I4`] lays them out: `len` nibbles).
    pub(crate) fn from_nibbles(packed: Vec<u8>, len: usize) -> Elements {
        Elements::stored(len, Narrow::I4(packed), None)
    }

    pub(crate) fn from_i8(v: Vec<i8>) -> Elements {
        Elements::stored(v.len(), Narrow::I8(v), None)
    }

    pub(crate) fn from_i16(v: Vec<i16>) -> Elements {
        Elements::stored(v.len(), Narrow::I16(v), None)
    }

    /// Elements held at 32 bits (the caller knows they need them).
    pub(crate) fn from_i32(v: Vec<i32>) -> Elements {
        Elements::stored(v.len(), Narrow::I32, Some(v))
    }

    fn stored(len: usize, narrow: Narrow, wide: Option<Vec<i32>>) -> Elements {
        let cell = OnceLock::new();
        if let Some(w) = wide {
            let _ = cell.set(w);
        }
        Elements(Arc::new(Stored {
            len,
            narrow,
            wide: cell,
        }))
    }

    /// Number of elements (without widening them).
    pub fn len(&self) -> usize {
        self.0.len
    }

    /// No elements.
    pub fn is_empty(&self) -> bool {
        self.0.len == 0
    }

    /// The width the elements are held at (the narrowest holding every value for elements decoded from a
    /// file or converted from `i32` or `i8`).
    pub fn width(&self) -> Width {
        match self.0.narrow {
            Narrow::I4(_) => Width::I4,
            Narrow::I8(_) => Width::I8,
            Narrow::I16(_) => Width::I16,
            Narrow::I32 => Width::I32,
        }
    }

    /// Bytes the elements take in memory now (the narrow ones and, once read as a slice, the `i32` copy).
    pub fn resident_bytes(&self) -> usize {
        let narrow = match &self.0.narrow {
            Narrow::I4(b) => b.len(),
            Narrow::I8(v) => v.len(),
            Narrow::I16(v) => 2 * v.len(),
            Narrow::I32 => 0,
        };
        narrow + self.0.wide.get().map_or(0, |w| 4 * w.len())
    }

    /// The elements as bytes, when they are held at 8 bits.
    pub fn bytes(&self) -> Option<&[i8]> {
        match &self.0.narrow {
            Narrow::I8(v) => Some(v),
            _ => None,
        }
    }

    /// The elements as `i16` when they are held at 16 bits (no copy).
    pub fn i16s(&self) -> Option<&[i16]> {
        match &self.0.narrow {
            Narrow::I16(v) => Some(v),
            _ => None,
        }
    }

    /// The same elements shared (clones of one constant) have the same identity.
    pub fn identity(&self) -> usize {
        Arc::as_ptr(&self.0) as usize
    }

    /// The elements as `i32` without keeping a widened copy: borrowed when they are `i32` (or were read
    /// as a slice before), else widened into a vector the caller drops.
    pub fn transient(&self) -> Cow<'_, [i32]> {
        self.range(0..self.0.len)
    }

    /// The elements `range` as `i32`, without keeping a widened copy.
    pub fn range(&self, range: std::ops::Range<usize>) -> Cow<'_, [i32]> {
        match self.0.wide.get() {
            Some(w) => Cow::Borrowed(&w[range]),
            None => Cow::Owned(self.widen(range)),
        }
    }

    /// The elements root ([`verity_core::elements_root`]), widening a run at a time into one buffer.
    pub fn root(&self) -> verity_core::Hash {
        if let Some(w) = self.0.wide.get() {
            return verity_core::elements_root(w);
        }
        let mut buf = Vec::new();
        verity_core::elements_root_of(self.len(), |r, hash| {
            buf.clear();
            self.widen_into(r, &mut buf);
            hash(&buf)
        })
    }

    fn widen(&self, range: std::ops::Range<usize>) -> Vec<i32> {
        let mut v = Vec::with_capacity(range.len());
        self.widen_into(range, &mut v);
        v
    }

    /// Append the elements `range` as `i32` to `out`.
    fn widen_into(&self, range: std::ops::Range<usize>, out: &mut Vec<i32>) {
        match &self.0.narrow {
            Narrow::I4(b) => out.extend(range.map(|i| {
                let byte = b[i / 2];
                let nib = if i % 2 == 0 { byte >> 4 } else { byte & 0x0f };
                ((nib << 4) as i8 >> 4) as i32
            })),
            Narrow::I8(v) => out.extend(v[range].iter().map(|&x| x as i32)),
            Narrow::I16(v) => out.extend(v[range].iter().map(|&x| x as i32)),
            // 32-bit elements are set at construction
            Narrow::I32 => {
                if let Some(w) = self.0.wide.get() {
                    out.extend_from_slice(&w[range]);
                }
            }
        }
    }
}

/// `v`'s values (each in `−8 … 7`) two to a byte, high nibble first.
fn nibbles<T: Copy + Into<i32>>(v: &[T]) -> Vec<u8> {
    let mut packed = vec![0u8; v.len().div_ceil(2)];
    for (i, &x) in v.iter().enumerate() {
        let nib = (x.into() as u8) & 0x0f;
        packed[i / 2] |= if i % 2 == 0 { nib << 4 } else { nib };
    }
    packed
}

impl From<Vec<i32>> for Elements {
    /// Held at the narrowest width that stores every value.
    fn from(v: Vec<i32>) -> Elements {
        let len = v.len();
        match Width::of(&v) {
            Width::I32 => Elements::from_i32(v),
            Width::I16 => Elements::from_i16(v.iter().map(|&x| x as i16).collect()),
            Width::I8 => Elements::from_i8(v.iter().map(|&x| x as i8).collect()),
            Width::I4 => Elements::from_nibbles(nibbles(&v), len),
        }
    }
}

impl From<Vec<i8>> for Elements {
    /// Held at 4 bits when every value fits, else at 8.
    fn from(v: Vec<i8>) -> Elements {
        if Width::of_values(&v) == Width::I4 {
            Elements::from(&v[..])
        } else {
            Elements::from_i8(v)
        }
    }
}

impl From<&[i8]> for Elements {
    /// Held at 4 bits when every value fits (no copy of the bytes is made then), else at 8.
    fn from(v: &[i8]) -> Elements {
        if Width::of_values(v) == Width::I4 {
            Elements::from_nibbles(nibbles(v), v.len())
        } else {
            Elements::from_i8(v.to_vec())
        }
    }
}

impl std::ops::Deref for Elements {
    type Target = [i32];

    /// The elements as `i32`, widened on first read and kept.
    fn deref(&self) -> &[i32] {
        self.0.wide.get_or_init(|| self.widen(0..self.0.len))
    }
}

impl PartialEq for Elements {
    fn eq(&self, other: &Elements) -> bool {
        self.identity() == other.identity()
            || (self.len() == other.len() && *self.transient() == *other.transient())
    }
}

impl Eq for Elements {}

impl std::fmt::Debug for Elements {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let head = self.range(0..self.len().min(16));
        write!(f, "Elements({:?}, {} ", self.width(), self.len())?;
        f.debug_list().entries(head.iter()).finish()?;
        if self.len() > 16 {
            write!(f, " …")?;
        }
        write!(f, ")")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_width_round_trips_and_widens_once() {
        for (v, w) in [
            (vec![-8, 7, 0, -1, 3], Width::I4),
            (vec![-8, 7, 0, -1], Width::I4),
            (vec![-128, 127, 8, -9], Width::I8),
            (vec![-32768, 32767, 128], Width::I16),
            (vec![i32::MIN, i32::MAX, 0], Width::I32),
            (vec![], Width::I4),
        ] {
            let e = Elements::from(v.clone());
            assert_eq!(e.width(), w, "{v:?}");
            if let Ok(bytes) = v
                .iter()
                .map(|&x| i8::try_from(x))
                .collect::<Result<Vec<i8>, _>>()
            {
                assert_eq!(Elements::from(&bytes[..]), e);
                let e8 = Elements::from(bytes);
                assert_eq!(e8.width(), w, "{v:?}");
                assert_eq!(e8, e);
            }
            assert_eq!(e.len(), v.len());
            assert_eq!(*e.transient(), v[..]);
            if v.len() > 2 {
                assert_eq!(*e.range(1..3), v[1..3]);
            }
            let narrow = e.resident_bytes();
            assert_eq!(e[..], v[..]);
            let kept = if w == Width::I32 { 0 } else { 4 * v.len() };
            assert_eq!(e.resident_bytes(), narrow + kept);
            assert_eq!(e, Elements::from(v.clone()));
            assert_eq!(e.root(), verity_core::elements_root(&v));
        }
        assert_ne!(Elements::from(vec![1, 2]), Elements::from(vec![1, 3]));
        assert_ne!(Elements::from(vec![1]), Elements::from(vec![1, 0]));
    }
}
