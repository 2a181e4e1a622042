//! Collaborative identifiers (CIDs): a few codebook indices, written in text as atomic tokens
//! `<|cid_begin|><s_a_12><s_b_7><s_c_200><|cid_end|>`.

use std::fmt;

/// Most levels a CID may have (three by default, one more for catalogs that need it).
pub const MAX_LEVELS: usize = 4;
// The markers' text exists once, here, as literal macros, so that other constant texts (the system
// prompt, answer formats) can be built from them with `concat!`.
macro_rules! cid_begin_lit {
    () => {
        "<|cid_begin|>"
    };
}
macro_rules! cid_end_lit {
    () => {
        "<|cid_end|>"
    };
}
pub(crate) use {cid_begin_lit, cid_end_lit};

/// Opening marker token of a CID.
pub const CID_BEGIN: &str = cid_begin_lit!();
/// Closing marker token of a CID.
pub const CID_END: &str = cid_end_lit!();
const LEVEL_LETTERS: [char; MAX_LEVELS] = ['a', 'b', 'c', 'd'];

/// A CID: `levels` codes, one per residual level.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Default)]
pub struct Cid {
    codes: [u16; MAX_LEVELS],
    levels: u8,
}

impl Cid {
    /// Builds a CID from its codes; `None` when there are no codes or more than [`MAX_LEVELS`].
    pub fn new(codes: &[u16]) -> Option<Self> {
        if codes.is_empty() || codes.len() > MAX_LEVELS {
            return None;
        }
        let mut c = [0u16; MAX_LEVELS];
        c[..codes.len()].copy_from_slice(codes);
        Some(Cid {
            codes: c,
            levels: codes.len() as u8,
        })
    }

    pub fn codes(&self) -> &[u16] {
        &self.codes[..self.levels as usize]
    }

    pub fn levels(&self) -> usize {
        self.levels as usize
    }

    /// The CID as the text the language model reads and writes.
    pub fn to_text(&self) -> String {
        self.to_string()
    }

    /// The code tokens alone, without the markers: how the next-item format writes an item
    /// (`crate::prompt::items_text`).
    pub fn codes_text(&self) -> String {
        self.codes()
            .iter()
            .enumerate()
            .map(|(l, &c)| code_token(l, c))
            .collect()
    }

    /// Parses `<|cid_begin|><s_a_1>...<|cid_end|>` (markers optional), requiring levels in order.
    pub fn parse(text: &str) -> Option<Self> {
        let t = text.trim();
        let t = t.strip_prefix(CID_BEGIN).unwrap_or(t);
        let t = t.strip_suffix(CID_END).unwrap_or(t);
        let mut codes = Vec::new();
        let mut rest = t;
        while !rest.is_empty() {
            let (level, code, tail) = parse_code_token(rest)?;
            if level != codes.len() {
                return None;
            }
            codes.push(code);
            rest = tail;
        }
        Cid::new(&codes)
    }
}

/// The token text of code `code` at level `level` (0-based): `<s_a_12>`.
pub fn code_token(level: usize, code: u16) -> String {
    format!("<s_{}_{}>", LEVEL_LETTERS[level], code)
}

/// Parses one `<s_x_N>` at the start of `s`: (level, code, rest).
pub fn parse_code_token(s: &str) -> Option<(usize, u16, &str)> {
    let s = s.strip_prefix("<s_")?;
    let mut chars = s.chars();
    let letter = chars.next()?;
    let level = LEVEL_LETTERS.iter().position(|&l| l == letter)?;
    let s = chars.as_str().strip_prefix('_')?;
    let end = s.find('>')?;
    let digits = &s[..end];
    if digits.is_empty()
        || digits.len() > 5
        || !digits.bytes().all(|b| b.is_ascii_digit())
        || (digits.len() > 1 && digits.starts_with('0'))
    {
        return None;
    }
    let code: u16 = digits.parse().ok()?;
    Some((level, code, &s[end + 1..]))
}

impl fmt::Display for Cid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(CID_BEGIN)?;
        for (l, &c) in self.codes().iter().enumerate() {
            write!(f, "<s_{}_{}>", LEVEL_LETTERS[l], c)?;
        }
        f.write_str(CID_END)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_round_trip() {
        let c = Cid::new(&[12, 7, 200]).unwrap();
        assert_eq!(
            c.to_text(),
            "<|cid_begin|><s_a_12><s_b_7><s_c_200><|cid_end|>"
        );
        assert_eq!(Cid::parse(&c.to_text()), Some(c));
        assert_eq!(Cid::parse("<s_a_12><s_b_7><s_c_200>"), Some(c));
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "<s_b_1>",
            "<s_a_1><s_c_2>",
            "<s_a_01>",
            "<s_a_x>",
            "<s_a_99999999>",
            "<s_a_1",
            "<s_e_1>",
            "<s_a_1><s_b_2><s_c_3><s_d_4><s_a_5>",
        ] {
            assert_eq!(Cid::parse(bad), None, "{bad}");
        }
    }
}
