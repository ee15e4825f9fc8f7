//! Compressed request bodies (`Content-Encoding: gzip`, `deflate`, `zstd`) for the Influx and
//! JSON write endpoints, decompressed within the body limit.
//!
//! The output is produced a piece at a time and counted as it grows, so a small body that
//! inflates without end (a "zip bomb") is refused once it passes the limit: memory stays under
//! the limit whatever the body claims. A stream that ends early or does not decode is refused
//! too, so a cut-off body is never half stored.

use std::io::Read;

/// A request body's `Content-Encoding`, as the Influx and JSON endpoints accept it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// Not compressed (no header, or `identity`).
    Identity,
    /// gzip (RFC 1952), one member or several in a row, as Go's reader takes them; Telegraf's
    /// `influxdb_v2` output sends this by default.
    Gzip,
    /// HTTP's `deflate`: zlib-wrapped (RFC 1950), or raw deflate (RFC 1951) as some clients
    /// send it, told apart by the zlib header.
    Deflate,
    /// Zstandard (RFC 8878), one frame or several.
    Zstd,
}

/// The encodings accepted, for error messages.
pub const SUPPORTED: &str = "gzip, deflate, zstd or identity";

impl Encoding {
    /// The encoding a `Content-Encoding` header names (absent: identity); `None` for one not
    /// spoken, or for a list of several (nobody sends that, and peeling layers off one by one
    /// would multiply the work a small body can cost).
    pub fn from_header(value: Option<&str>) -> Option<Encoding> {
        let v = value.unwrap_or("").trim();
        Some(if v.is_empty() || v.eq_ignore_ascii_case("identity") {
            Encoding::Identity
        } else if v.eq_ignore_ascii_case("gzip") || v.eq_ignore_ascii_case("x-gzip") {
            Encoding::Gzip
        } else if v.eq_ignore_ascii_case("deflate") {
            Encoding::Deflate
        } else if v.eq_ignore_ascii_case("zstd") {
            Encoding::Zstd
        } else {
            return None;
        })
    }

    /// The name, as in the header.
    pub fn name(self) -> &'static str {
        match self {
            Encoding::Identity => "identity",
            Encoding::Gzip => "gzip",
            Encoding::Deflate => "deflate",
            Encoding::Zstd => "zstd",
        }
    }
}

/// Why a compressed body was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecompressError {
    /// The output passed the limit; decompression stopped there.
    #[error(
        "request body decompresses ({encoding}) to more than the limit of {limit} bytes \
         (limits.max_body_bytes)"
    )]
    TooLarge {
        /// The body's encoding.
        encoding: &'static str,
        /// The limit, in decompressed bytes.
        limit: usize,
    },
    /// The stream is damaged, cut short, or followed by bytes that are not part of it.
    #[error("request body is not valid {encoding} data: {detail}")]
    Invalid {
        /// The body's encoding.
        encoding: &'static str,
        /// What the decoder found wrong.
        detail: String,
    },
}

/// Smallest zstd window accepted, as a power of two: 8 MiB, what zstd's levels up to 19 and
/// other encoders' defaults use when they do not know the input's size up front.
const ZSTD_MIN_WINDOW_LOG: u32 = 23;

/// Largest zstd window accepted: 128 MiB, zstd's own default ceiling for decoding.
const ZSTD_MAX_WINDOW_LOG: u32 = 27;

/// Decompresses `raw` as `encoding` into at most `limit` bytes (identity is returned as is).
pub fn decompress(
    raw: &[u8],
    encoding: Encoding,
    limit: usize,
) -> Result<Vec<u8>, DecompressError> {
    let name = encoding.name();
    let invalid = |detail: String| DecompressError::Invalid {
        encoding: name,
        detail,
    };
    match encoding {
        Encoding::Identity => Ok(raw.to_vec()),
        Encoding::Gzip => {
            // The gzip trailer (length and CRC-32) is checked, so a cut-off stream is an error.
            let decoder = flate2::bufread::MultiGzDecoder::new(raw);
            read_capped(decoder, raw.len(), limit, name)
        }
        Encoding::Deflate => inflate(raw, looks_like_zlib(raw), limit),
        Encoding::Zstd => {
            // The decoder allocates the window a frame declares: a window larger than the
            // whole output may be is never needed, so a forged one cannot cost more memory.
            let window_log = limit
                .max(1)
                .next_power_of_two()
                .trailing_zeros()
                .clamp(ZSTD_MIN_WINDOW_LOG, ZSTD_MAX_WINDOW_LOG);
            let mut decoder = zstd::stream::read::Decoder::with_buffer(raw)
                .map_err(|e| invalid(e.to_string()))?;
            decoder
                .window_log_max(window_log)
                .map_err(|e| invalid(e.to_string()))?;
            read_capped(decoder, raw.len(), limit, name)
        }
    }
}

/// True when `raw` starts with a zlib header (deflate method, header checksum right), rather
/// than raw deflate data.
fn looks_like_zlib(raw: &[u8]) -> bool {
    match raw {
        [cmf, flg, ..] => cmf & 0x0f == 8 && (u16::from(*cmf) << 8 | u16::from(*flg)) % 31 == 0,
        _ => false,
    }
}

/// How much output room is allocated first, as a multiple of the input: text metrics compress
/// about tenfold, and growing from there doubles.
const EXPECTED_RATIO: usize = 8;

/// The first output allocation for `input_len` compressed bytes, within `limit`.
fn first_capacity(input_len: usize, limit: usize) -> usize {
    input_len
        .saturating_mul(EXPECTED_RATIO)
        .max(4096)
        .min(limit.saturating_add(1))
}

/// The size a full output buffer of `len` bytes grows to (doubling), at most one byte past
/// `limit` (a byte past it proves the output too large without decompressing further); `None`
/// when it is already there.
fn grown(len: usize, limit: usize) -> Option<usize> {
    let room = limit.saturating_add(1).saturating_sub(len);
    (room > 0).then(|| len + len.max(4096).min(room))
}

/// Reads `decoder` to its end into at most `limit` bytes.
fn read_capped(
    mut decoder: impl Read,
    input_len: usize,
    limit: usize,
    encoding: &'static str,
) -> Result<Vec<u8>, DecompressError> {
    // Readers write into initialised memory only: the buffer is zeroed as it grows (each byte
    // once), and `filled` says how much of it holds output.
    let mut out = vec![0u8; first_capacity(input_len, limit)];
    let mut filled = 0;
    loop {
        if filled == out.len() {
            let Some(len) = grown(out.len(), limit) else {
                return Err(DecompressError::TooLarge { encoding, limit });
            };
            out.resize(len, 0);
        }
        match decoder.read(&mut out[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(DecompressError::Invalid {
                    encoding,
                    detail: e.to_string(),
                })
            }
        }
    }
    if filled > limit {
        return Err(DecompressError::TooLarge { encoding, limit });
    }
    out.truncate(filled);
    Ok(out)
}

/// Inflates zlib-wrapped (`zlib`) or raw deflate data into at most `limit` bytes. flate2's
/// readers end a cut-off deflate stream quietly; here the stream must reach its end, and
/// nothing may follow it.
fn inflate(raw: &[u8], zlib: bool, limit: usize) -> Result<Vec<u8>, DecompressError> {
    let invalid = |detail: &str| DecompressError::Invalid {
        encoding: "deflate",
        detail: detail.to_owned(),
    };
    let mut d = flate2::Decompress::new(zlib);
    let mut out = Vec::with_capacity(first_capacity(raw.len(), limit));
    loop {
        if out.len() == out.capacity() {
            let Some(cap) = grown(out.len(), limit) else {
                return Err(DecompressError::TooLarge {
                    encoding: "deflate",
                    limit,
                });
            };
            out.reserve_exact(cap - out.len());
        }
        let consumed = d.total_in() as usize;
        let produced = out.len();
        let status = d
            .decompress_vec(&raw[consumed..], &mut out, flate2::FlushDecompress::None)
            .map_err(|e| invalid(&e.to_string()))?;
        match status {
            flate2::Status::StreamEnd => break,
            _ if d.total_in() as usize == consumed && out.len() == produced => {
                // No progress although there is room: the input ran out before the stream
                // ended.
                return Err(invalid("the stream ends before its last block"));
            }
            _ => {}
        }
    }
    if (d.total_in() as usize) < raw.len() {
        return Err(invalid("data follows the end of the stream"));
    }
    if out.len() > limit {
        return Err(DecompressError::TooLarge {
            encoding: "deflate",
            limit,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn zlib(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn raw_deflate(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn zstd(data: &[u8]) -> Vec<u8> {
        zstd::encode_all(data, 3).unwrap()
    }

    fn text(n: usize) -> Vec<u8> {
        (0..n)
            .map(|i| format!("cpu,host=h{} usage={i} {i}\n", i % 97))
            .collect::<String>()
            .into_bytes()
    }

    #[test]
    fn headers_name_the_encodings() {
        use Encoding::*;
        for (h, e) in [
            (None, Some(Identity)),
            (Some(""), Some(Identity)),
            (Some("identity"), Some(Identity)),
            (Some("GZIP"), Some(Gzip)),
            (Some(" x-gzip "), Some(Gzip)),
            (Some("deflate"), Some(Deflate)),
            (Some("zstd"), Some(Zstd)),
            (Some("br"), None),
            (Some("snappy"), None),
            (Some("gzip, gzip"), None),
        ] {
            assert_eq!(Encoding::from_header(h), e, "{h:?}");
        }
    }

    #[test]
    fn every_encoding_round_trips() {
        let data = text(20_000);
        let limit = data.len();
        for (enc, body) in [
            (Encoding::Gzip, gzip(&data)),
            (Encoding::Deflate, zlib(&data)),
            (Encoding::Deflate, raw_deflate(&data)),
            (Encoding::Zstd, zstd(&data)),
            (Encoding::Identity, data.clone()),
        ] {
            assert_eq!(decompress(&body, enc, limit).unwrap(), data, "{enc:?}");
        }
        // Several gzip members or zstd frames in a row are one body.
        let mut two = gzip(b"a value=1\n");
        two.extend(gzip(b"b value=2\n"));
        assert_eq!(
            decompress(&two, Encoding::Gzip, 100).unwrap(),
            b"a value=1\nb value=2\n"
        );
        let mut two = zstd(b"a value=1\n");
        two.extend(zstd(b"b value=2\n"));
        assert_eq!(
            decompress(&two, Encoding::Zstd, 100).unwrap(),
            b"a value=1\nb value=2\n"
        );
        // Empty input decompresses to nothing only where the format allows it.
        assert_eq!(decompress(&gzip(b""), Encoding::Gzip, 0).unwrap(), b"");
    }

    #[test]
    fn output_past_the_limit_is_refused_without_producing_it() {
        // 1 GiB of zeros would be a bomb; 16 MiB is enough to show decompression stops at the
        // limit (the output never grows past limit + 1).
        let zeros = vec![0u8; 16 << 20];
        for (enc, body) in [
            (Encoding::Gzip, gzip(&zeros)),
            (Encoding::Deflate, zlib(&zeros)),
            (Encoding::Deflate, raw_deflate(&zeros)),
            (Encoding::Zstd, zstd(&zeros)),
        ] {
            assert!(body.len() < 100_000, "{enc:?}: {}", body.len());
            assert_eq!(
                decompress(&body, enc, 1_000_000),
                Err(DecompressError::TooLarge {
                    encoding: enc.name(),
                    limit: 1_000_000
                }),
                "{enc:?}"
            );
        }
        // Exactly the limit is accepted.
        let data = text(1000);
        assert_eq!(
            decompress(&gzip(&data), Encoding::Gzip, data.len()).unwrap(),
            data
        );
        assert!(decompress(&gzip(&data), Encoding::Gzip, data.len() - 1).is_err());
    }

    #[test]
    fn cut_off_and_damaged_streams_are_refused() {
        let data = text(5000);
        for (enc, body) in [
            (Encoding::Gzip, gzip(&data)),
            (Encoding::Deflate, zlib(&data)),
            (Encoding::Deflate, raw_deflate(&data)),
            (Encoding::Zstd, zstd(&data)),
        ] {
            for cut in [1, 2, 5, body.len() / 2, body.len() - 1] {
                let r = decompress(&body[..cut], enc, 1 << 20);
                assert!(
                    matches!(r, Err(DecompressError::Invalid { encoding, .. }) if encoding == enc.name()),
                    "{enc:?} cut at {cut}: {:?}",
                    r.map(|v| v.len())
                );
            }
            let mut trailing = body.clone();
            trailing.extend_from_slice(b"junk");
            assert!(
                decompress(&trailing, enc, 1 << 20).is_err(),
                "{enc:?} with junk after it"
            );
        }
        // Where the format has a checksum (gzip, zlib) damage anywhere is found; zstd frames
        // (without their optional checksum) and raw deflate only notice damage to structure.
        for (enc, body, at) in [
            (Encoding::Gzip, gzip(&data), 0.5),
            (Encoding::Deflate, zlib(&data), 0.5),
            (Encoding::Zstd, zstd(&data), 0.0),
        ] {
            let mut damaged = body.clone();
            let i = (damaged.len() as f64 * at) as usize;
            damaged[i] ^= 0xff;
            assert!(
                decompress(&damaged, enc, 1 << 20).is_err(),
                "{enc:?} damaged"
            );
        }
        assert!(decompress(b"m value=1", Encoding::Gzip, 100).is_err());
        assert!(decompress(b"m value=1", Encoding::Zstd, 100).is_err());
        assert!(decompress(b"", Encoding::Deflate, 100).is_err());
    }

    #[test]
    fn a_forged_zstd_window_is_refused() {
        // Streamed without a known size, with a 1 GiB window (long-distance mode).
        let mut e = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
        e.window_log(30).unwrap();
        e.write_all(&text(100)).unwrap();
        let body = e.finish().unwrap();
        let r = decompress(&body, Encoding::Zstd, 1 << 20);
        assert!(matches!(&r, Err(DecompressError::Invalid { .. })), "{r:?}");
        // The same data with an ordinary window decodes.
        let mut e = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
        e.write_all(&text(100)).unwrap();
        let body = e.finish().unwrap();
        assert_eq!(
            decompress(&body, Encoding::Zstd, 1 << 20).unwrap(),
            text(100)
        );
    }
}
