//! QR codes from a link payload, rendered for a terminal (Unicode half blocks), as SVG and as
//! PNG.
//!
//! The encoder is the `qrcode` crate without its default features (no `image`): the renderers
//! here are a few lines each, and PNG goes through the small `png` crate instead of `image`.

use std::fmt::Write as _;

use qrcode::{Color, EcLevel, QrCode};

/// Largest payload accepted: 1024 bytes. WhatsApp's link payloads are about 200; the bound
/// keeps a code small enough to scan from a terminal and caps the rendering cost of a
/// payload that arrived from elsewhere.
pub const MAX_PAYLOAD_LEN: usize = 1024;

/// Light modules around the code that scanners need: 4 in the QR standard. Terminals and
/// most screens already have a margin, so the terminal renderer uses 2 by default.
pub const STANDARD_QUIET_ZONE: usize = 4;

/// Largest PNG module size in pixels: 64 (a 1024-byte payload then gives a ~7 k pixel
/// square, which is still a small 1-bit image).
pub const MAX_PNG_SCALE: u32 = 64;

/// Why a payload could not be turned into a QR code or an image. Every variant is the
/// caller's fault (a bad payload or option); retrying the same input fails again.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QrError {
    /// Nothing to encode.
    #[error("QR payload is empty")]
    Empty,
    /// Longer than [`MAX_PAYLOAD_LEN`] or than a QR code can hold.
    #[error("QR payload of {len} bytes is longer than the {max} bytes allowed")]
    TooLong {
        /// Payload length in bytes.
        len: usize,
        /// The bound that was exceeded.
        max: usize,
    },
    /// A PNG scale outside 1..=[`MAX_PNG_SCALE`].
    #[error("PNG scale {0} is outside 1..={MAX_PNG_SCALE}")]
    InvalidScale(u32),
    /// The QR encoder refused the payload for another reason (not expected for byte mode).
    #[error("QR encoding failed: {0}")]
    Encode(String),
    /// The PNG encoder failed (writing to memory; not expected).
    #[error("PNG encoding failed: {0}")]
    Png(String),
}

/// How terminal output draws the code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TerminalStyle {
    /// Black on white with ANSI colour codes: correct on dark and light terminals alike, as
    /// long as the terminal shows colours.
    #[default]
    Ansi,
    /// Glyphs only, drawn for the dark modules: right on terminals with a light background.
    Plain,
    /// Glyphs only, drawn for the light modules (and the quiet zone): right on terminals with
    /// a dark background, and where colours are off.
    PlainInverted,
}

/// An encoded QR code: a square of dark and light modules, without quiet zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Qr {
    width: usize,
    dark: Vec<bool>,
}

impl Qr {
    /// Encodes `payload` in byte mode with error correction level L (the densest choice
    /// keeps the code small in a terminal; screens are clean enough not to need more).
    pub fn encode(payload: &str) -> Result<Qr, QrError> {
        if payload.is_empty() {
            return Err(QrError::Empty);
        }
        if payload.len() > MAX_PAYLOAD_LEN {
            return Err(QrError::TooLong {
                len: payload.len(),
                max: MAX_PAYLOAD_LEN,
            });
        }
        let code =
            QrCode::with_error_correction_level(payload.as_bytes(), EcLevel::L).map_err(|e| match e {
                // Unreachable below MAX_PAYLOAD_LEN today, mapped anyway should the bound grow.
                qrcode::types::QrError::DataTooLong => QrError::TooLong {
                    len: payload.len(),
                    max: MAX_PAYLOAD_LEN,
                },
                other => QrError::Encode(other.to_string()),
            })?;
        let width = code.width();
        let dark = code.to_colors().into_iter().map(|c| c == Color::Dark).collect();
        Ok(Qr { width, dark })
    }

    /// Modules per side, without quiet zone (21 for version 1, +4 per version).
    pub fn width(&self) -> usize {
        self.width
    }

    /// Whether module (`x`, `y`) is dark; coordinates outside the code (the quiet zone) are
    /// light.
    pub fn is_dark(&self, x: isize, y: isize) -> bool {
        let w = self.width as isize;
        (0..w).contains(&x) && (0..w).contains(&y) && self.dark[(y * w + x) as usize]
    }

    /// Terminal text: one character per module column and two module rows per line (upper
    /// and lower half blocks), `quiet_zone` light modules on every side. Lines end with
    /// `\n`; with [`TerminalStyle::Ansi`] each line sets its colours and resets them at its end.
    pub fn to_terminal(&self, quiet_zone: usize, style: TerminalStyle) -> String {
        let q = quiet_zone as isize;
        let side = self.width as isize + 2 * q;
        // "Ink" is what a glyph draws: dark modules, or light ones when inverted.
        let inverted = style == TerminalStyle::PlainInverted;
        let ink = |x: isize, y: isize| {
            if y >= side {
                // Below the last row of an odd-height square: background, never ink.
                return false;
            }
            self.is_dark(x - q, y - q) != inverted
        };
        let mut out = String::with_capacity((side as usize + 16) * (side as usize / 2 + 1) * 3);
        let mut y = 0;
        while y < side {
            if style == TerminalStyle::Ansi {
                out.push_str("\x1b[30;47m");
            }
            for x in 0..side {
                out.push(match (ink(x, y), ink(x, y + 1)) {
                    (true, true) => '█',
                    (true, false) => '▀',
                    (false, true) => '▄',
                    (false, false) => ' ',
                });
            }
            if style == TerminalStyle::Ansi {
                out.push_str("\x1b[0m");
            }
            out.push('\n');
            y += 2;
        }
        out
    }

    /// An SVG document: `module_px` user units per module, `quiet_zone` light modules on every
    /// side, white background, one black path of unit squares.
    pub fn to_svg(&self, module_px: u32, quiet_zone: usize) -> String {
        let side = self.width + 2 * quiet_zone;
        let px = side as u64 * u64::from(module_px.max(1));
        let mut out = String::with_capacity(256 + self.dark.len() * 4);
        let _ = write!(
            out,
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
             <svg xmlns=\"http://www.w3.org/2000/svg\" version=\"1.1\" width=\"{px}\" height=\"{px}\" \
             viewBox=\"0 0 {side} {side}\" shape-rendering=\"crispEdges\">\n\
             <rect width=\"{side}\" height=\"{side}\" fill=\"#ffffff\"/>\n<path fill=\"#000000\" d=\""
        );
        for y in 0..self.width {
            for x in 0..self.width {
                if self.dark[y * self.width + x] {
                    let _ = write!(out, "M{},{}h1v1h-1z", x + quiet_zone, y + quiet_zone);
                }
            }
        }
        out.push_str("\"/>\n</svg>\n");
        out
    }

    /// A 1-bit greyscale PNG: `scale` pixels per module (1..=[`MAX_PNG_SCALE`]),
    /// `quiet_zone` light modules on every side.
    pub fn to_png(&self, scale: u32, quiet_zone: usize) -> Result<Vec<u8>, QrError> {
        if !(1..=MAX_PNG_SCALE).contains(&scale) {
            return Err(QrError::InvalidScale(scale));
        }
        let s = scale as usize;
        let side = (self.width + 2 * quiet_zone) * s;
        let row_bytes = side.div_ceil(8);
        let q = quiet_zone as isize;
        // 1-bit greyscale: a set bit is white. Start all white, clear the dark modules.
        let mut data = vec![0xffu8; row_bytes * side];
        for py in 0..side {
            let my = (py / s) as isize - q;
            for px in 0..side {
                if self.is_dark((px / s) as isize - q, my) {
                    data[py * row_bytes + px / 8] &= !(0x80 >> (px % 8));
                }
            }
        }
        let mut out = Vec::new();
        let png_err = |e: png::EncodingError| QrError::Png(e.to_string());
        let mut enc = png::Encoder::new(&mut out, side as u32, side as u32);
        enc.set_color(png::ColorType::Grayscale);
        enc.set_depth(png::BitDepth::One);
        let mut w = enc.write_header().map_err(png_err)?;
        w.write_image_data(&data).map_err(png_err)?;
        w.finish().map_err(png_err)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A realistic WhatsApp link payload shape: ref, noise key, identity key, adv secret.
    const PAYLOAD: &str = "2@Vn1Yy0Qv3Ke6vK1p9Uq0bZrF8wq3xYk2dF8oQm7sT1uP4aL5cE6gH9jK0lM2nB3vC4xZ5aS6dF7gH8jK9lQ0wE1rT2yU3iO4pA5sD6fG7hJ8kL9zX0cV1bN2mQ3wE4rT5yU6i,\
        8wq3xYk2dF8oQm7sT1uP4aL5cE6gH9jK0lM2nB3vC4x=,Z5aS6dF7gH8jK9lQ0wE1rT2yU3iO4pA5sD6fG7hJ8kL=,9zX0cV1bN2mQ3wE4rT5yU6iO7pA8sD9fG0hJ1kL2zX=";

    /// Decodes a bitmap (true = dark) with rqrr, an independent decoder.
    fn decode(side: usize, dark: impl Fn(usize, usize) -> bool) -> String {
        let mut img =
            rqrr::PreparedImage::prepare_from_greyscale(side, side, |x, y| if dark(x, y) { 0 } else { 255 });
        let grids = img.detect_grids();
        assert_eq!(grids.len(), 1, "one code in the image");
        grids[0].decode().expect("rqrr decodes it").1
    }

    /// Upscales a module matrix so rqrr's finder sees clean edges.
    fn decode_modules(side: usize, dark: impl Fn(usize, usize) -> bool) -> String {
        let s = 4;
        decode(side * s, |x, y| dark(x / s, y / s))
    }

    #[test]
    fn encode_bounds() {
        assert_eq!(Qr::encode(""), Err(QrError::Empty));
        let long = "x".repeat(MAX_PAYLOAD_LEN + 1);
        assert_eq!(
            Qr::encode(&long),
            Err(QrError::TooLong {
                len: MAX_PAYLOAD_LEN + 1,
                max: MAX_PAYLOAD_LEN
            })
        );
        let max = Qr::encode(&"x".repeat(MAX_PAYLOAD_LEN)).expect("the bound itself fits");
        assert_eq!((max.width() - 17) % 4, 0, "a QR width is 17 + 4 × version");
        let qr = Qr::encode("hi").unwrap();
        assert_eq!(qr.width(), 21, "two bytes fit version 1");
        assert!(!qr.is_dark(-1, 0) && !qr.is_dark(0, 21), "outside is quiet zone");
        assert!(qr.is_dark(0, 0), "the finder pattern's corner is dark");
    }

    /// Reads terminal output back into modules: each character holds two rows.
    fn parse_terminal(text: &str, inverted: bool) -> (usize, Vec<Vec<bool>>) {
        let lines: Vec<&str> = text.lines().collect();
        let side = lines[0].chars().count();
        let mut rows = vec![Vec::new(); lines.len() * 2];
        for (i, line) in lines.iter().enumerate() {
            assert_eq!(line.chars().count(), side, "line {i} has the width of the square");
            for c in line.chars() {
                let (top, bottom) = match c {
                    '█' => (true, true),
                    '▀' => (true, false),
                    '▄' => (false, true),
                    ' ' => (false, false),
                    other => panic!("unexpected {other:?}"),
                };
                rows[2 * i].push(top != inverted);
                rows[2 * i + 1].push(bottom != inverted);
            }
        }
        rows.truncate(side);
        (side, rows)
    }

    #[test]
    fn terminal_round_trips_in_every_style() {
        let qr = Qr::encode(PAYLOAD).unwrap();
        for (style, inverted) in [
            (TerminalStyle::Plain, false),
            (TerminalStyle::PlainInverted, true),
            (TerminalStyle::Ansi, false),
        ] {
            let q = 2;
            let text = qr.to_terminal(q, style);
            let plain = text.replace("\x1b[30;47m", "").replace("\x1b[0m", "");
            if style == TerminalStyle::Ansi {
                assert_eq!(
                    text.matches("\x1b[0m").count(),
                    plain.lines().count(),
                    "colours reset per line"
                );
            }
            let (side, rows) = parse_terminal(&plain, inverted);
            assert_eq!(side, qr.width() + 2 * q);
            assert_eq!(
                plain.lines().count(),
                side.div_ceil(2),
                "two module rows per line"
            );
            for (y, row) in rows.iter().enumerate() {
                for (x, &dark) in row.iter().enumerate() {
                    let in_zone = x < q || y < q || x >= side - q || y >= side - q;
                    if in_zone {
                        assert!(!dark, "quiet zone module ({x},{y}) is light");
                    }
                    assert_eq!(dark, qr.is_dark(x as isize - q as isize, y as isize - q as isize));
                }
            }
            assert_eq!(decode_modules(side, |x, y| rows[y][x]), PAYLOAD, "{style:?}");
        }
    }

    #[test]
    fn svg_has_one_square_per_dark_module_and_decodes() {
        let qr = Qr::encode(PAYLOAD).unwrap();
        let q = STANDARD_QUIET_ZONE;
        let svg = qr.to_svg(8, q);
        let side = qr.width() + 2 * q;
        assert!(svg.contains(&format!("viewBox=\"0 0 {side} {side}\"")));
        assert!(svg.contains(&format!("width=\"{}\"", side * 8)));
        let d = svg.split(" d=\"").nth(1).unwrap().split('"').next().unwrap();
        let mut grid = vec![vec![false; side]; side];
        for square in d.split('M').filter(|s| !s.is_empty()) {
            let xy = square.strip_suffix("h1v1h-1z").expect("unit square");
            let (x, y) = xy.split_once(',').unwrap();
            let (x, y): (usize, usize) = (x.parse().unwrap(), y.parse().unwrap());
            assert!(
                (q..side - q).contains(&x) && (q..side - q).contains(&y),
                "nothing in the quiet zone"
            );
            grid[y][x] = true;
        }
        let dark = (0..qr.width() as isize)
            .flat_map(|y| (0..qr.width() as isize).map(move |x| (x, y)))
            .filter(|&(x, y)| qr.is_dark(x, y))
            .count();
        assert_eq!(d.matches('M').count(), dark);
        assert_eq!(decode_modules(side, |x, y| grid[y][x]), PAYLOAD);
    }

    #[test]
    fn png_decodes_back_with_the_right_size_and_quiet_zone() {
        let qr = Qr::encode(PAYLOAD).unwrap();
        let (scale, q) = (4u32, STANDARD_QUIET_ZONE);
        let bytes = qr.to_png(scale, q).unwrap();
        let mut reader = png::Decoder::new(std::io::Cursor::new(bytes))
            .read_info()
            .unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        let side = (qr.width() + 2 * q) * scale as usize;
        assert_eq!((info.width as usize, info.height as usize), (side, side));
        assert_eq!(
            (info.color_type, info.bit_depth),
            (png::ColorType::Grayscale, png::BitDepth::One)
        );
        let dark = |x: usize, y: usize| buf[y * info.line_size + x / 8] & (0x80 >> (x % 8)) == 0;
        let zone = q * scale as usize;
        for y in 0..side {
            for x in 0..side {
                if x < zone || y < zone || x >= side - zone || y >= side - zone {
                    assert!(!dark(x, y), "quiet zone pixel ({x},{y}) is white");
                }
            }
        }
        assert_eq!(decode(side, dark), PAYLOAD);
        assert_eq!(qr.to_png(0, 4), Err(QrError::InvalidScale(0)));
        assert_eq!(
            qr.to_png(MAX_PNG_SCALE + 1, 4),
            Err(QrError::InvalidScale(MAX_PNG_SCALE + 1))
        );
    }
}
