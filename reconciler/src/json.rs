//! A reader for the JSON of Debezium's change records that reads the few fields the
//! reconciler keeps where they lie and skips the rest with a grammar check only.
//!
//! serde_json spent most of a change's decoding parsing the 50-odd keys of each record
//! (to match them against the structs' fields) rather than scanning bytes. This reader
//! compares keys as bytes and skips a value without building anything.
//!
//! It never decides a record's fate alone: it reads the shape Debezium writes and
//! *declines* anything else (an escape in a key or a kept string, a number that is not
//! a plain integer, a duplicate field, deep nesting), and then serde_json reads the
//! record and returns its value or its error. So it only accepts what serde_json
//! accepts, with the same value (property tests hold it to that); it may decline more.

/// The reader did not decide: serde_json reads the record instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Declined;

pub(crate) type Read<T> = Result<T, Declined>;

/// Nesting allowed inside a skipped value. serde_json stops at 128 levels in all; the
/// records this reads have none in the values it skips.
const MAX_SKIP_DEPTH: u32 = 32;

/// UTF-8 is checked where serde_json checks it: in every key of an object it reads
/// into a struct and every string it keeps, not in the values it skips.
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, at: 0 }
    }

    /// All of `bytes` as one value read by `read`, only whitespace after it, as
    /// serde_json's `from_slice` requires.
    pub(crate) fn whole<T>(bytes: &'a [u8], read: impl FnOnce(&mut Self) -> Read<T>) -> Read<T> {
        let mut r = Self::new(bytes);
        let value = read(&mut r)?;
        r.end()?;
        Ok(value)
    }

    fn whitespace(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.bytes.get(self.at) {
            self.at += 1;
        }
    }

    fn peek(&mut self) -> Read<u8> {
        self.whitespace();
        self.bytes.get(self.at).copied().ok_or(Declined)
    }

    fn eat(&mut self, byte: u8) -> Read<()> {
        if self.peek()? != byte {
            return Err(Declined);
        }
        self.at += 1;
        Ok(())
    }

    /// Nothing but whitespace left.
    fn end(&mut self) -> Read<()> {
        self.whitespace();
        if self.at == self.bytes.len() {
            Ok(())
        } else {
            Err(Declined)
        }
    }

    /// An object: `field` gets each key and must read its value. Keys with an escape
    /// are declined (serde_json would unescape them before matching).
    pub(crate) fn object(
        &mut self,
        mut field: impl FnMut(&'a [u8], &mut Self) -> Read<()>,
    ) -> Read<()> {
        self.members(b'{', b'}', |r| {
            let key = r.key()?;
            r.eat(b':')?;
            field(key, r)
        })
    }

    /// `open`, members separated by commas (no trailing one), `close`.
    fn members(
        &mut self,
        open: u8,
        close: u8,
        mut member: impl FnMut(&mut Self) -> Read<()>,
    ) -> Read<()> {
        self.eat(open)?;
        if self.peek()? == close {
            self.at += 1;
            return Ok(());
        }
        loop {
            member(self)?;
            match self.peek()? {
                b',' => self.at += 1,
                b if b == close => {
                    self.at += 1;
                    return Ok(());
                }
                _ => return Err(Declined),
            }
        }
    }

    /// A string without escapes, borrowed from the record.
    pub(crate) fn plain_string(&mut self) -> Read<&'a str> {
        std::str::from_utf8(self.plain_bytes()?).map_err(|_| Declined)
    }

    /// A string without escapes, its UTF-8 left unchecked.
    pub(crate) fn plain_bytes(&mut self) -> Read<&'a [u8]> {
        self.eat(b'"')?;
        let start = self.at;
        self.plain_run()?;
        if self.bytes[self.at] != b'"' {
            return Err(Declined);
        }
        self.at += 1;
        Ok(&self.bytes[start..self.at - 1])
    }

    /// A key: compared as bytes, but checked as UTF-8 as serde_json checks it (ASCII
    /// first: `from_utf8`'s setup costs more than a short key).
    fn key(&mut self) -> Read<&'a [u8]> {
        let key = self.plain_bytes()?;
        if key.is_ascii() || std::str::from_utf8(key).is_ok() {
            Ok(key)
        } else {
            Err(Declined)
        }
    }

    /// Moves to the next byte of a string that is not plain text: its closing quote,
    /// an escape, or a control character (an error in JSON). Eight bytes at a time, as
    /// serde_json does: most of a record's bytes are inside strings.
    fn plain_run(&mut self) -> Read<()> {
        const ONES: u64 = u64::from_le_bytes([1; 8]);
        const HIGHS: u64 = ONES << 7;
        // High bit set in each byte of `x` that is zero; a borrow can also flag a byte
        // above a zero one, never below, so the lowest flag is exact.
        let zero_bytes = |x: u64| x.wrapping_sub(ONES) & !x & HIGHS;
        while let Some(chunk) = self.bytes.get(self.at..self.at + 8) {
            let mut word = [0; 8];
            word.copy_from_slice(chunk);
            let x = u64::from_le_bytes(word);
            let stops = zero_bytes(x ^ (ONES * u64::from(b'"')))
                | zero_bytes(x ^ (ONES * u64::from(b'\\')))
                | (x.wrapping_sub(ONES * 0x20) & !x & HIGHS);
            if stops != 0 {
                self.at += (stops.trailing_zeros() / 8) as usize;
                return Ok(());
            }
            self.at += 8;
        }
        let len = self.bytes[self.at..]
            .iter()
            .position(|&b| STOPS_A_STRING[usize::from(b)])
            .ok_or(Declined)?;
        self.at += len;
        Ok(())
    }

    /// `null`, consumed, or false with nothing consumed.
    pub(crate) fn null(&mut self) -> Read<bool> {
        if self.peek()? == b'n' {
            self.literal(b"null")?;
            return Ok(true);
        }
        Ok(false)
    }

    pub(crate) fn optional_string(&mut self) -> Read<Option<&'a str>> {
        if self.null()? {
            return Ok(None);
        }
        self.plain_string().map(Some)
    }

    /// An integer, as serde_json reads into an `i64`. Fractions, exponents, `-0` (a
    /// float to serde_json) and numbers of 20 digits or more are declined.
    pub(crate) fn integer(&mut self) -> Read<i64> {
        let negative = self.peek()? == b'-';
        if negative {
            self.at += 1;
        }
        let digits = self.digits();
        let after = self.bytes.get(self.at).copied();
        if digits.is_empty()
            || digits.len() > 19
            || (digits[0] == b'0' && (digits.len() > 1 || negative))
            || matches!(after, Some(b'.' | b'e' | b'E'))
        {
            return Err(Declined);
        }
        // 19 digits fit a u64.
        let magnitude = digits
            .iter()
            .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
        if negative {
            0i64.checked_sub_unsigned(magnitude)
        } else {
            i64::try_from(magnitude).ok()
        }
        .ok_or(Declined)
    }

    fn digits(&mut self) -> &'a [u8] {
        let start = self.at;
        while self.bytes.get(self.at).is_some_and(u8::is_ascii_digit) {
            self.at += 1;
        }
        &self.bytes[start..self.at]
    }

    fn literal(&mut self, word: &[u8]) -> Read<()> {
        if !self.bytes[self.at..].starts_with(word) {
            return Err(Declined);
        }
        self.at += word.len();
        Ok(())
    }

    /// Any JSON value, checked against the grammar as serde_json checks a value it
    /// ignores, and dropped.
    pub(crate) fn skip(&mut self) -> Read<()> {
        self.skip_nested(0)
    }

    fn skip_nested(&mut self, depth: u32) -> Read<()> {
        if depth > MAX_SKIP_DEPTH {
            return Err(Declined);
        }
        match self.peek()? {
            b'"' => self.skip_string(),
            b'{' => self.members(b'{', b'}', |r| {
                r.skip_string()?;
                r.eat(b':')?;
                r.skip_nested(depth + 1)
            }),
            b'[' => self.members(b'[', b']', |r| r.skip_nested(depth + 1)),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            b'-' | b'0'..=b'9' => self.skip_number(),
            _ => Err(Declined),
        }
    }

    /// A string with any escapes JSON allows (`\u` with four hex digits, as serde_json
    /// checks an ignored one: not whether they make a valid code point).
    fn skip_string(&mut self) -> Read<()> {
        self.eat(b'"')?;
        loop {
            self.plain_run()?;
            match self.bytes[self.at] {
                b'"' => {
                    self.at += 1;
                    return Ok(());
                }
                b'\\' => {
                    let escape = self.bytes.get(self.at + 1).copied().ok_or(Declined)?;
                    self.at += 2;
                    match escape {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => {}
                        b'u' => {
                            let hex = self.bytes.get(self.at..self.at + 4).ok_or(Declined)?;
                            if !hex.iter().all(u8::is_ascii_hexdigit) {
                                return Err(Declined);
                            }
                            self.at += 4;
                        }
                        _ => return Err(Declined),
                    }
                }
                // A control character, which JSON strings may not hold raw.
                _ => return Err(Declined),
            }
        }
    }

    /// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`
    fn skip_number(&mut self) -> Read<()> {
        if self.bytes[self.at] == b'-' {
            self.at += 1;
        }
        let int = self.digits();
        if int.is_empty() || (int.len() > 1 && int[0] == b'0') {
            return Err(Declined);
        }
        if self.bytes.get(self.at) == Some(&b'.') {
            self.at += 1;
            if self.digits().is_empty() {
                return Err(Declined);
            }
        }
        if let Some(b'e' | b'E') = self.bytes.get(self.at) {
            self.at += 1;
            if let Some(b'+' | b'-') = self.bytes.get(self.at) {
                self.at += 1;
            }
            if self.digits().is_empty() {
                return Err(Declined);
            }
        }
        Ok(())
    }
}

/// Where a run of a string's plain characters ends: its closing quote, an escape, or a
/// control character (an error in JSON).
static STOPS_A_STRING: [bool; 256] = {
    let mut stops = [false; 256];
    let mut b = 0;
    while b < 0x20 {
        stops[b] = true;
        b += 1;
    }
    stops[b'"' as usize] = true;
    stops[b'\\' as usize] = true;
    stops
};

/// Sets a field read once; a second occurrence is declined (serde's derived structs
/// reject a duplicate field).
pub(crate) fn once<T>(slot: &mut Option<T>, value: T) -> Read<()> {
    if slot.is_some() {
        return Err(Declined);
    }
    *slot = Some(value);
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    fn skipped(text: &str) -> Read<()> {
        Reader::whole(text.as_bytes(), Reader::skip)
    }

    #[test]
    fn skips_what_serde_json_accepts() {
        for text in [
            r#"{"a": [1, -2.5e+3, 0, 0.0, 1E9, true, false, null, "x\"\\\/\b\f\n\r\t\u00e9"], "b": {}}"#,
            "[]",
            " \"\" ",
            "-0",
            r#"{"é": "ü"}"#,
        ] {
            assert_eq!(skipped(text), Ok(()), "{text}");
            assert!(serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok());
        }
    }

    #[test]
    fn declines_what_serde_json_rejects() {
        for text in [
            "01",
            "1.",
            "-",
            "1e",
            ".5",
            "+1",
            "tru",
            "nul",
            "[1,]",
            "{\"a\":1,}",
            "{\"a\" 1}",
            "\"\\x\"",
            "\"\\u12G4\"",
            "\"a\nb\"",
            "\"open",
            "{} {}",
            "[1 2]",
        ] {
            assert_eq!(skipped(text), Err(Declined), "{text}");
            assert!(
                serde_json::from_str::<serde::de::IgnoredAny>(text).is_err(),
                "{text}"
            );
        }
    }

    #[test]
    fn integers_are_plain() {
        let read = |text: &str| Reader::whole(text.as_bytes(), Reader::integer);
        assert_eq!(read("1250"), Ok(1250));
        assert_eq!(read("-7"), Ok(-7));
        assert_eq!(read("0"), Ok(0));
        assert_eq!(read("9223372036854775807"), Ok(i64::MAX));
        assert_eq!(read("-9223372036854775808"), Ok(i64::MIN));
        assert!(
            serde_json::from_str::<i64>("-0").is_err(),
            "-0 is a float to serde_json"
        );
        for declined in [
            "1.0",
            "1e3",
            "012",
            "-0",
            "9223372036854775808",
            "-9223372036854775809",
            "12345678901234567890",
            "-",
            "",
            "x",
        ] {
            assert_eq!(read(declined), Err(Declined), "{declined}");
            assert!(serde_json::from_str::<i64>(declined).is_err(), "{declined}");
        }
    }

    #[test]
    fn a_string_run_stops_at_its_first_quote_escape_or_control_character() {
        for filler in ["a", "é", "\u{7f}", " "] {
            for len in 0..24 {
                for stop in [b'"', b'\\', 0x00, 0x1f] {
                    let mut text = filler.repeat(len).into_bytes();
                    let at = text.len();
                    text.push(stop);
                    text.extend_from_slice(b"\"\\ tail");
                    let mut r = Reader::new(&text);
                    r.plain_run().unwrap();
                    assert_eq!(r.at, at, "{filler:?} x {len}, then {stop:#x}");
                }
            }
        }
    }

    #[test]
    fn deep_nesting_is_declined() {
        let deep = format!("{}{}", "[".repeat(40), "]".repeat(40));
        assert_eq!(skipped(&deep), Err(Declined));
        assert!(serde_json::from_str::<serde::de::IgnoredAny>(&deep).is_ok());
    }

    proptest! {
        /// Whatever it skips, serde_json accepts (JSON text, possibly broken by a byte).
        #[test]
        fn skips_only_what_serde_json_accepts(
            value in any_json(),
            at in any::<prop::sample::Index>(),
            byte in prop::sample::select(&b"{}[]\",:\\0-.eE \nu"[..]),
            edit in 0..3u8,
        ) {
            let mut text = serde_json::to_vec(&value).unwrap();
            match edit {
                0 => {}
                1 => { let i = at.index(text.len()); text[i] = byte; }
                _ => { let i = at.index(text.len() + 1); text.insert(i, byte); }
            }
            if Reader::whole(&text, Reader::skip).is_ok() {
                prop_assert!(serde_json::from_slice::<serde::de::IgnoredAny>(&text).is_ok());
            }
            if edit == 0 {
                prop_assert_eq!(skipped(std::str::from_utf8(&text).unwrap()), Ok(()));
            }
        }
    }

    pub(crate) fn any_json() -> impl Strategy<Value = serde_json::Value> {
        use serde_json::Value;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            ".{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map(".{0,8}", inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }
}
