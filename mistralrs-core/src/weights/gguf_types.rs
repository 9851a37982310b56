//! ggml's tensor type ids, and a scan of a GGUF header that finds the first
//! tensor whose type the engine cannot run. candle's reader stops at such a
//! tensor with "unknown dtype"; a user needs the tensor's name and the
//! type's (an IQ quant, a ternary type, MXFP4) to know what to do.

use std::io::Read;

/// ggml's name for type id `id` (`ggml.h`'s `enum ggml_type`).
pub fn ggml_type_name(id: u32) -> &'static str {
    match id {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        4 => "Q4_2 (removed from ggml)",
        5 => "Q4_3 (removed from ggml)",
        6 => "Q5_0",
        7 => "Q5_1",
        8 => "Q8_0",
        9 => "Q8_1",
        10 => "Q2_K",
        11 => "Q3_K",
        12 => "Q4_K",
        13 => "Q5_K",
        14 => "Q6_K",
        15 => "Q8_K",
        16 => "IQ2_XXS",
        17 => "IQ2_XS",
        18 => "IQ3_XXS",
        19 => "IQ1_S",
        20 => "IQ4_NL",
        21 => "IQ3_S",
        22 => "IQ2_S",
        23 => "IQ4_XS",
        24 => "I8",
        25 => "I16",
        26 => "I32",
        27 => "I64",
        28 => "F64",
        29 => "IQ1_M",
        30 => "BF16",
        34 => "TQ1_0",
        35 => "TQ2_0",
        39 => "MXFP4",
        _ => "an unknown type",
    }
}

/// Type ids this engine runs.
pub fn is_supported(id: u32) -> bool {
    matches!(id, 0..=3 | 6..=15 | 30)
}

struct Reader<R: Read> {
    r: R,
    version: u32,
}

impl<R: Read> Reader<R> {
    fn bytes<const N: usize>(&mut self) -> std::io::Result<[u8; N]> {
        let mut b = [0u8; N];
        self.r.read_exact(&mut b)?;
        Ok(b)
    }
    fn u32(&mut self) -> std::io::Result<u32> {
        Ok(u32::from_le_bytes(self.bytes()?))
    }
    fn u64(&mut self) -> std::io::Result<u64> {
        Ok(u64::from_le_bytes(self.bytes()?))
    }
    /// Counts and lengths are u32 in GGUF v1, u64 from v2 on.
    fn len(&mut self) -> std::io::Result<u64> {
        if self.version == 1 {
            self.u32().map(u64::from)
        } else {
            self.u64()
        }
    }
    fn skip(&mut self, n: u64) -> std::io::Result<()> {
        let copied = std::io::copy(&mut (&mut self.r).take(n), &mut std::io::sink())?;
        if copied < n {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        Ok(())
    }
    fn string(&mut self) -> std::io::Result<String> {
        let n = self.len()?;
        if n > 1 << 24 {
            return Err(std::io::Error::other("string too long"));
        }
        let mut b = vec![0u8; n as usize];
        self.r.read_exact(&mut b)?;
        Ok(String::from_utf8_lossy(&b).into_owned())
    }
    fn skip_value(&mut self, ty: u32) -> std::io::Result<()> {
        match ty {
            0 | 1 | 7 => self.skip(1),
            2 | 3 => self.skip(2),
            4..=6 => self.skip(4),
            10..=12 => self.skip(8),
            8 => {
                let n = self.len()?;
                self.skip(n)
            }
            9 => {
                let elem = self.u32()?;
                let n = self.len()?;
                for _ in 0..n {
                    self.skip_value(elem)?;
                }
                Ok(())
            }
            _ => Err(std::io::Error::other(format!("unknown metadata value type {ty}"))),
        }
    }
}

/// The first tensor (name, type id) of a GGUF stream whose type the engine
/// cannot run; None if every type is supported (or the header is unreadable,
/// which the caller reports itself).
pub fn first_unsupported_tensor(r: impl Read) -> Option<(String, u32)> {
    let mut rd = Reader { r: std::io::BufReader::new(r), version: 0 };
    let magic: [u8; 4] = rd.bytes().ok()?;
    if &magic != b"GGUF" {
        return None;
    }
    rd.version = rd.u32().ok()?;
    let n_tensors = rd.len().ok()?;
    let n_kv = rd.len().ok()?;
    for _ in 0..n_kv {
        rd.string().ok()?;
        let ty = rd.u32().ok()?;
        rd.skip_value(ty).ok()?;
    }
    for _ in 0..n_tensors {
        let name = rd.string().ok()?;
        let dims = rd.u32().ok()?;
        for _ in 0..dims {
            rd.len().ok()?;
        }
        let ty = rd.u32().ok()?;
        rd.u64().ok()?;
        if !is_supported(ty) {
            return Some((name, ty));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A v3 header with one string metadata entry, an array entry, and two tensors.
    fn header(second_type: u32) -> Vec<u8> {
        let mut b = b"GGUF".to_vec();
        b.extend(3u32.to_le_bytes());
        b.extend(2u64.to_le_bytes()); // tensors
        b.extend(2u64.to_le_bytes()); // metadata entries
        let s = |b: &mut Vec<u8>, x: &str| {
            b.extend((x.len() as u64).to_le_bytes());
            b.extend(x.as_bytes());
        };
        s(&mut b, "general.architecture");
        b.extend(8u32.to_le_bytes());
        s(&mut b, "llama");
        s(&mut b, "tokenizer.ggml.scores");
        b.extend(9u32.to_le_bytes());
        b.extend(6u32.to_le_bytes()); // f32 elements
        b.extend(2u64.to_le_bytes());
        b.extend([0u8; 8]);
        for (name, ty) in [("token_embd.weight", 0u32), ("blk.0.attn_q.weight", second_type)] {
            s(&mut b, name);
            b.extend(2u32.to_le_bytes());
            b.extend(256u64.to_le_bytes());
            b.extend(4u64.to_le_bytes());
            b.extend(ty.to_le_bytes());
            b.extend(0u64.to_le_bytes());
        }
        b
    }

    #[test]
    fn finds_the_tensor_with_an_iq_type() {
        assert_eq!(first_unsupported_tensor(&header(16)[..]), Some(("blk.0.attn_q.weight".into(), 16)));
        assert_eq!(ggml_type_name(16), "IQ2_XXS");
        assert_eq!(first_unsupported_tensor(&header(12)[..]), None);
        assert_eq!(first_unsupported_tensor(&header(39)[..]).map(|(_, t)| ggml_type_name(t)), Some("MXFP4"));
    }
}
