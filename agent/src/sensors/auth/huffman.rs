//! HPACK's Huffman code (RFC 7541 Appendix B), decoded a bit at a time and across pieces.
//!
//! The code is canonical (codes of one length are consecutive, in symbol order, and each length's
//! first code follows the previous length's last), so the code lengths alone define it: the
//! tables below are computed from them at compile time, and a test checks codes the RFC lists.

/// Code length of each symbol, 0..=255 and EOS (256), from RFC 7541 Appendix B.
const LENGTHS: [u8; 257] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 30, 28,
    28, 28, 28, 28, 28, 28, 28, 28, 6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, 5, 5,
    5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10, 13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7,
    7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, 15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6,
    6, 5, 6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, 20, 22, 20, 20, 22, 22, 22, 23, 22,
    23, 23, 23, 23, 23, 24, 23, 24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, 22,
    21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, 21, 21, 22, 21, 23, 22, 23, 23, 20,
    22, 22, 22, 23, 22, 22, 23, 26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, 19,
    21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27, 20, 24, 20, 21, 22, 21, 21, 23, 22,
    22, 25, 25, 24, 24, 26, 23, 26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26, 30,
];

const MAX_LEN: usize = 30;

/// Number of codes of each length.
const COUNT: [u32; MAX_LEN + 1] = {
    let mut c = [0u32; MAX_LEN + 1];
    let mut s = 0;
    while s < LENGTHS.len() {
        c[LENGTHS[s] as usize] += 1;
        s += 1;
    }
    c
};

/// The first (numerically smallest) code of each length.
const FIRST: [u32; MAX_LEN + 1] = {
    let mut f = [0u32; MAX_LEN + 1];
    let mut len = 1;
    while len <= MAX_LEN {
        f[len] = (f[len - 1] + COUNT[len - 1]) << 1;
        len += 1;
    }
    f
};

/// Where each length's symbols start in `SYMBOLS`.
const BASE: [u16; MAX_LEN + 1] = {
    let mut b = [0u16; MAX_LEN + 1];
    let mut len = 1;
    while len <= MAX_LEN {
        b[len] = b[len - 1] + COUNT[len - 1] as u16;
        len += 1;
    }
    b
};

/// Symbols ordered by code length, then by value.
const SYMBOLS: [u16; 257] = {
    let mut out = [0u16; 257];
    let mut n = 0;
    let mut len = 1;
    while len <= MAX_LEN {
        let mut s = 0;
        while s < LENGTHS.len() {
            if LENGTHS[s] as usize == len {
                out[n] = s as u16;
                n += 1;
            }
            s += 1;
        }
        len += 1;
    }
    out
};

const EOS: u16 = 256;

/// A Huffman-coded string being decoded: the bits of the code not finished yet.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Huffman {
    code: u32,
    len: u8,
}

/// The string is not valid Huffman code (EOS inside, or a code longer than any).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Invalid;

impl Huffman {
    /// Decodes the next bytes of the string, handing each symbol to `out`.
    pub(super) fn feed(&mut self, bytes: &[u8], mut out: impl FnMut(u8)) -> Result<(), Invalid> {
        let (mut code, mut len) = (self.code, usize::from(self.len));
        for &byte in bytes {
            for shift in (0..8).rev() {
                code = (code << 1) | u32::from((byte >> shift) & 1);
                len += 1;
                let offset = code.wrapping_sub(FIRST[len]);
                if offset < COUNT[len] {
                    let symbol = SYMBOLS[usize::from(BASE[len]) + offset as usize];
                    if symbol == EOS {
                        return Err(Invalid);
                    }
                    out(symbol as u8);
                    (code, len) = (0, 0);
                } else if len == MAX_LEN {
                    return Err(Invalid);
                }
            }
        }
        (self.code, self.len) = (code, len as u8);
        Ok(())
    }

    /// The string ended: what is left must be padding, under 8 bits of the EOS prefix (all ones).
    pub(super) fn finish(&self) -> Result<(), Invalid> {
        if self.len < 8 && self.code == (1 << self.len) - 1 {
            Ok(())
        } else {
            Err(Invalid)
        }
    }
}

#[cfg(test)]
pub(super) fn decode(bytes: &[u8]) -> Result<Vec<u8>, Invalid> {
    let mut h = Huffman::default();
    let mut out = Vec::new();
    h.feed(bytes, |b| out.push(b))?;
    h.finish()?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The canonical code of `symbol`.
    fn code_of(symbol: usize) -> (u32, u8) {
        let len = LENGTHS[symbol];
        let rank = SYMBOLS[usize::from(BASE[usize::from(len)])..]
            .iter()
            .position(|&s| usize::from(s) == symbol)
            .unwrap();
        (FIRST[usize::from(len)] + rank as u32, len)
    }

    #[test]
    fn codes_match_the_rfc() {
        // Rows of RFC 7541 Appendix B.
        assert_eq!(code_of(0), (0x1ff8, 13));
        assert_eq!(code_of(b' ' as usize), (0x14, 6));
        assert_eq!(code_of(b'0' as usize), (0x0, 5));
        assert_eq!(code_of(b'a' as usize), (0x3, 5));
        assert_eq!(code_of(b'/' as usize), (0x18, 6));
        assert_eq!(code_of(b'A' as usize), (0x21, 6));
        assert_eq!(code_of(b'Z' as usize), (0xfd, 8));
        assert_eq!(code_of(b'~' as usize), (0x1ffd, 13));
        assert_eq!(code_of(255), (0x3ffffee, 26));
        assert_eq!(code_of(256), (0x3fffffff, 30));
        assert_eq!(COUNT.iter().sum::<u32>(), 257);
    }

    #[test]
    fn rfc_examples() {
        // RFC 7541 C.4.1-C.4.3 and C.6.1 string literals.
        let cases: [(&[u8], &[u8]); 5] = [
            (
                &[
                    0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab, 0x90, 0xf4, 0xff,
                ],
                b"www.example.com",
            ),
            (&[0xa8, 0xeb, 0x10, 0x64, 0x9c, 0xbf], b"no-cache"),
            (
                &[0x25, 0xa8, 0x49, 0xe9, 0x5b, 0xa9, 0x7d, 0x7f],
                b"custom-key",
            ),
            (
                &[0x25, 0xa8, 0x49, 0xe9, 0x5b, 0xb8, 0xe8, 0xb4, 0xbf],
                b"custom-value",
            ),
            (&[0x64, 0x02], b"302"),
        ];
        for (coded, plain) in cases {
            assert_eq!(decode(coded).unwrap(), plain);
            // Any split decodes the same.
            for split in 0..coded.len() {
                let mut h = Huffman::default();
                let mut out = Vec::new();
                h.feed(&coded[..split], |b| out.push(b)).unwrap();
                h.feed(&coded[split..], |b| out.push(b)).unwrap();
                h.finish().unwrap();
                assert_eq!(out, plain);
            }
        }
    }

    #[test]
    fn bad_padding_and_eos() {
        // 'a' (00011) then 3 zero bits: padding must be ones.
        assert_eq!(decode(&[0x18]), Err(Invalid));
        // 'a' then 11 one bits: padding longer than 7 bits.
        assert_eq!(decode(&[0x1f, 0xff]), Err(Invalid));
        // EOS (30 ones) inside the string.
        assert_eq!(decode(&[0xff, 0xff, 0xff, 0xff]), Err(Invalid));
        assert_eq!(decode(&[]), Ok(vec![]));
    }
}
