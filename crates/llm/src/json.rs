//! JSON mode (spec: `docs/spec/llm.md` §4.3): a byte-level recognizer of the prefixes of one JSON
//! object (RFC 8259), so a generation can be limited, step by step, to tokens that keep its output a
//! prefix of valid JSON, and end only when the object is complete. The rule depends only on the bytes
//! generated so far, so a constrained generation stays canonical and re-executable.

/// Whitespace bytes allowed in one run between tokens of the JSON text (a model that would emit
/// blank lines forever has to write JSON instead).
pub const MAX_WHITESPACE_RUN: u32 = 64;
/// Objects and arrays nested deeper than this are refused.
pub const MAX_DEPTH: usize = 32;

/// Where the recognizer is inside the text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lex {
    /// Before the top-level object (only whitespace and `{`).
    Start,
    /// A value is expected; `close` when `]` may end an empty array instead.
    Value { close: bool },
    /// After `{` (a key or `}`).
    KeyOrClose,
    /// After `,` in an object (a key).
    Key,
    /// After a key (`:`).
    Colon,
    /// After a value (`,` or the container's close).
    After,
    /// Inside a string; `key` if it is an object's key.
    Str { key: bool, esc: Esc, utf8: u8 },
    /// Inside a number.
    Num(Num),
    /// Inside `true`, `false` or `null`: the literal and how many bytes are matched.
    Lit { word: &'static [u8], at: u8 },
    /// The top-level object is closed.
    Done,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Esc {
    None,
    /// After `\`.
    Backslash,
    /// After `\u` and this many hex digits.
    Hex(u8),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Num {
    Minus,
    Zero,
    Int,
    Dot,
    Frac,
    E,
    ESign,
    Exp,
}

impl Num {
    fn complete(self) -> bool {
        matches!(self, Num::Zero | Num::Int | Num::Frac | Num::Exp)
    }
}

/// The recognizer's state: the open containers (`true` for an object) and the lexical state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JsonState {
    stack: Vec<bool>,
    lex: Lex,
    ws: u32,
}

impl Default for JsonState {
    fn default() -> Self {
        JsonState::new()
    }
}

/// A cheap view of a state for trying a token: the base stack is shared, pops and pushes are local.
struct Probe<'a> {
    base: &'a [bool],
    popped: usize,
    pushed: Vec<bool>,
    lex: Lex,
    ws: u32,
}

impl Probe<'_> {
    fn top(&self) -> Option<bool> {
        self.pushed
            .last()
            .copied()
            .or_else(|| self.base[..self.base.len() - self.popped].last().copied())
    }
    fn depth(&self) -> usize {
        self.base.len() - self.popped + self.pushed.len()
    }
    fn push(&mut self, object: bool) -> bool {
        if self.depth() >= MAX_DEPTH {
            return false;
        }
        self.pushed.push(object);
        true
    }
    fn pop(&mut self) {
        if self.pushed.pop().is_none() {
            self.popped += 1;
        }
    }
    /// After a value: inside a container, or done.
    fn after_value(&mut self) -> Lex {
        if self.depth() == 0 {
            Lex::Done
        } else {
            Lex::After
        }
    }

    /// Takes one byte; false if no JSON object has the bytes so far as a prefix.
    fn byte(&mut self, b: u8) -> bool {
        let ws = matches!(b, b' ' | b'\t' | b'\n' | b'\r');
        // strings, numbers and literals first: whitespace means something else there
        match self.lex {
            Lex::Str { key, esc, utf8 } => return self.string(b, key, esc, utf8),
            Lex::Num(n) => {
                if let Some(next) = number(n, b) {
                    self.lex = Lex::Num(next);
                    return true;
                }
                if !n.complete() {
                    return false;
                }
                self.lex = self.after_value();
                // the byte that ended the number is read again below
            }
            Lex::Lit { word, at } => {
                if word[at as usize] != b {
                    return false;
                }
                self.lex = if at as usize + 1 == word.len() {
                    self.after_value()
                } else {
                    Lex::Lit { word, at: at + 1 }
                };
                return true;
            }
            _ => {}
        }
        if ws {
            if self.lex == Lex::Done || self.ws >= MAX_WHITESPACE_RUN {
                return false;
            }
            self.ws += 1;
            return true;
        }
        self.ws = 0;
        match self.lex {
            Lex::Start => {
                if b != b'{' {
                    return false;
                }
                self.lex = Lex::KeyOrClose;
                self.push(true)
            }
            Lex::Value { close } => {
                if close && b == b']' {
                    self.pop();
                    self.lex = self.after_value();
                    return true;
                }
                self.value(b)
            }
            Lex::KeyOrClose | Lex::Key => {
                if b == b'"' {
                    self.lex = Lex::Str {
                        key: true,
                        esc: Esc::None,
                        utf8: 0,
                    };
                    true
                } else if b == b'}' && self.lex == Lex::KeyOrClose {
                    self.pop();
                    self.lex = self.after_value();
                    true
                } else {
                    false
                }
            }
            Lex::Colon => {
                if b != b':' {
                    return false;
                }
                self.lex = Lex::Value { close: false };
                true
            }
            Lex::After => match (b, self.top()) {
                (b',', Some(true)) => {
                    self.lex = Lex::Key;
                    true
                }
                (b',', Some(false)) => {
                    self.lex = Lex::Value { close: false };
                    true
                }
                (b'}', Some(true)) | (b']', Some(false)) => {
                    self.pop();
                    self.lex = self.after_value();
                    true
                }
                _ => false,
            },
            Lex::Done => false,
            Lex::Str { .. } | Lex::Num(_) | Lex::Lit { .. } => false,
        }
    }

    /// The first byte of a value.
    fn value(&mut self, b: u8) -> bool {
        self.lex = match b {
            b'{' => {
                if !self.push(true) {
                    return false;
                }
                Lex::KeyOrClose
            }
            b'[' => {
                if !self.push(false) {
                    return false;
                }
                Lex::Value { close: true }
            }
            b'"' => Lex::Str {
                key: false,
                esc: Esc::None,
                utf8: 0,
            },
            b'-' => Lex::Num(Num::Minus),
            b'0' => Lex::Num(Num::Zero),
            b'1'..=b'9' => Lex::Num(Num::Int),
            b't' => Lex::Lit {
                word: b"true",
                at: 1,
            },
            b'f' => Lex::Lit {
                word: b"false",
                at: 1,
            },
            b'n' => Lex::Lit {
                word: b"null",
                at: 1,
            },
            _ => return false,
        };
        true
    }

    fn string(&mut self, b: u8, key: bool, esc: Esc, utf8: u8) -> bool {
        let set = |esc, utf8| Lex::Str { key, esc, utf8 };
        if utf8 > 0 {
            // a continuation byte of a multi-byte character
            if b & 0xC0 != 0x80 {
                return false;
            }
            self.lex = set(Esc::None, utf8 - 1);
            return true;
        }
        match esc {
            Esc::Backslash => {
                self.lex = match b {
                    b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => set(Esc::None, 0),
                    b'u' => set(Esc::Hex(0), 0),
                    _ => return false,
                };
                true
            }
            Esc::Hex(n) => {
                if !b.is_ascii_hexdigit() {
                    return false;
                }
                self.lex = set(if n == 3 { Esc::None } else { Esc::Hex(n + 1) }, 0);
                true
            }
            Esc::None => {
                self.lex = match b {
                    b'"' => {
                        if key {
                            Lex::Colon
                        } else {
                            self.after_value()
                        }
                    }
                    b'\\' => set(Esc::Backslash, 0),
                    0..=0x1F => return false,
                    0x20..=0x7F => set(Esc::None, 0),
                    0xC2..=0xDF => set(Esc::None, 1),
                    0xE0..=0xEF => set(Esc::None, 2),
                    0xF0..=0xF4 => set(Esc::None, 3),
                    _ => return false,
                };
                true
            }
        }
    }
}

/// The number state after byte `b`, if `b` continues the number.
fn number(n: Num, b: u8) -> Option<Num> {
    let digit = b.is_ascii_digit();
    Some(match (n, b) {
        (Num::Minus, b'0') => Num::Zero,
        (Num::Minus, _) if digit => Num::Int,
        (Num::Int, _) if digit => Num::Int,
        (Num::Zero | Num::Int, b'.') => Num::Dot,
        (Num::Dot | Num::Frac, _) if digit => Num::Frac,
        (Num::Zero | Num::Int | Num::Frac, b'e' | b'E') => Num::E,
        (Num::E, b'+' | b'-') => Num::ESign,
        (Num::E | Num::ESign | Num::Exp, _) if digit => Num::Exp,
        _ => return None,
    })
}

impl JsonState {
    /// Before any byte.
    pub fn new() -> JsonState {
        JsonState {
            stack: Vec::new(),
            lex: Lex::Start,
            ws: 0,
        }
    }

    fn probe(&self) -> Probe<'_> {
        Probe {
            base: &self.stack,
            popped: 0,
            pushed: Vec::new(),
            lex: self.lex,
            ws: self.ws,
        }
    }

    /// Whether the bytes so far followed by `bytes` are still a prefix of one JSON object.
    pub fn accepts(&self, bytes: &[u8]) -> bool {
        let mut p = self.probe();
        bytes.iter().all(|&b| p.byte(b))
    }

    /// Takes `bytes`; false (state unchanged) if they would leave the language.
    pub fn push(&mut self, bytes: &[u8]) -> bool {
        let mut p = self.probe();
        if !bytes.iter().all(|&b| p.byte(b)) {
            return false;
        }
        let (popped, pushed, lex, ws) = (p.popped, p.pushed, p.lex, p.ws);
        self.stack.truncate(self.stack.len() - popped);
        self.stack.extend(pushed);
        self.lex = lex;
        self.ws = ws;
        true
    }

    /// Whether the top-level object is closed.
    pub fn is_complete(&self) -> bool {
        self.lex == Lex::Done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid_prefix(s: &str) -> bool {
        JsonState::new().accepts(s.as_bytes())
    }

    #[test]
    fn whole_objects_are_complete() {
        for s in [
            "{}",
            " {\"a\": 1}",
            "{\"a\":[1,2.5,-0.5e+3,true,false,null,{\"b\":\"\\u00e9\\n\"}],\"c\":\"日本\"}",
            "{\n  \"x\": [ ],\n  \"y\": {}\n}",
        ] {
            let mut j = JsonState::new();
            assert!(j.push(s.as_bytes()), "{s}");
            assert!(j.is_complete(), "{s}");
            // and serde agrees it is JSON
            assert!(serde_json::from_str::<serde_json::Value>(s).is_ok(), "{s}");
        }
    }

    #[test]
    fn prefixes_are_accepted_and_mistakes_are_not() {
        let s = "{\"key\": [10, -2.5e3, \"s\\\"t\"], \"n\": null}";
        for i in 0..=s.len() {
            let mut j = JsonState::new();
            assert!(j.push(&s.as_bytes()[..i]), "prefix {i}");
            assert_eq!(j.is_complete(), i == s.len());
            // byte by byte gives the same state as at once
            let mut k = JsonState::new();
            for b in &s.as_bytes()[..i] {
                assert!(k.push(&[*b]));
            }
            assert_eq!(j, k);
        }
        for bad in [
            "[1]",
            "\"s\"",
            "1",
            "{1",
            "{\"a\" 1",
            "{\"a\":}",
            "{\"a\":1,}",
            "{\"a\":01",
            "{\"a\":1.}",
            "{\"a\":-}",
            "{\"a\":tru}",
            "{\"a\":[1,]",
            "{\"a\":\"\n\"",
            "{\"a\":\"\\x\"",
            "{\"a\":\"\\u12g\"",
            "{}{",
            "{} ",
            "{\"a\":1]",
            "{\"a\":[1}",
        ] {
            // each holds a byte no JSON object can have there
            let mut j = JsonState::new();
            assert!(!j.push(bad.as_bytes()), "{bad:?} accepted");
            assert_eq!(j, JsonState::new(), "a refused push leaves the state");
        }
        assert!(valid_prefix("{\"a\":1"), "a number may go on");
        assert!(valid_prefix("{\"a\":1.5e"));
        assert!(valid_prefix("{\"é"));
    }

    #[test]
    fn utf8_inside_strings_is_checked_byte_by_byte() {
        let e = "é".as_bytes(); // C3 A9
        let mut j = JsonState::new();
        assert!(j.push(b"{\""));
        assert!(j.push(&e[..1]), "the first byte of a character");
        assert!(!j.accepts(b"a"), "an ASCII byte cannot continue it");
        assert!(j.push(&e[1..]));
        assert!(!j.accepts(&[0xFF]));
        assert!(!j.accepts(&[0x80]), "a lone continuation byte");
    }

    #[test]
    fn whitespace_runs_and_depth_are_bounded() {
        let mut j = JsonState::new();
        assert!(j.push(b"{"));
        assert!(j.push(&[b' '; MAX_WHITESPACE_RUN as usize]));
        assert!(!j.accepts(b" "), "the run is full");
        assert!(j.push(b"\"a\":"));
        assert!(j.push(b" "), "a new run after a token");
        let deep = "[".repeat(MAX_DEPTH - 1);
        assert!(j.push(deep.as_bytes()));
        assert!(!j.accepts(b"["), "deeper than the limit");
        assert!(!j.accepts(b"{"));
        let mut done = JsonState::new();
        assert!(done.push(b"{}"));
        assert!(
            !done.accepts(b" ") && !done.accepts(b"x"),
            "nothing after the object"
        );
    }
}
