//! PNG charts without a plotting crate.
//!
//! Why our own: `plotters` draws text only through a system font (font-kit and
//! fontconfig) or a TTF file shipped with the tool, and brings ~40 crates to a build
//! that CI runs on two cores; a chart of two lines needs a canvas, a 5×7 bitmap font
//! and a PNG writer. The PNG is 8-bit indexed colour, compressed with deflate's fixed
//! Huffman code and run-length matches (distance 1), which suits charts: mostly long
//! runs of background.

/// One measured stage of a ramp.
#[derive(Debug, Clone, Copy)]
pub struct Point {
    pub x: f64,
    pub pps: f64,
    pub loss_percent: f64,
}

const W: usize = 900;
const H: usize = 520;
const PALETTE: [[u8; 3]; 6] = [
    [255, 255, 255], // 0 background
    [40, 40, 40],    // 1 text, axes
    [210, 210, 210], // 2 grid
    [31, 119, 180],  // 3 blue: packets
    [214, 39, 40],   // 4 red: loss
    [44, 160, 44],   // 5 green
];

struct Canvas {
    px: Vec<u8>,
}

impl Canvas {
    fn new() -> Self {
        Self { px: vec![0; W * H] }
    }

    fn set(&mut self, x: i64, y: i64, c: u8) {
        if (0..W as i64).contains(&x) && (0..H as i64).contains(&y) {
            self.px[y as usize * W + x as usize] = c;
        }
    }

    fn rect(&mut self, x0: i64, y0: i64, x1: i64, y1: i64, c: u8) {
        for y in y0.min(y1)..=y0.max(y1) {
            for x in x0.min(x1)..=x0.max(x1) {
                self.set(x, y, c);
            }
        }
    }

    fn line(&mut self, (x0, y0): (i64, i64), (x1, y1): (i64, i64), c: u8, thick: i64) {
        let (dx, dy) = ((x1 - x0).abs(), -(y1 - y0).abs());
        let (sx, sy) = (if x0 < x1 { 1 } else { -1 }, if y0 < y1 { 1 } else { -1 });
        let (mut x, mut y, mut err) = (x0, y0, dx + dy);
        loop {
            self.rect(
                x - thick / 2,
                y - thick / 2,
                x + thick / 2,
                y + thick / 2,
                c,
            );
            if x == x1 && y == y1 {
                break;
            }
            let e2 = 2 * err;
            if e2 >= dy {
                err += dy;
                x += sx;
            }
            if e2 <= dx {
                err += dx;
                y += sy;
            }
        }
    }

    /// Text at (x, y) (top left), `scale` pixels per font pixel.
    fn text(&mut self, x: i64, y: i64, s: &str, c: u8, scale: i64) {
        let mut cx = x;
        for ch in s.chars() {
            let g = glyph(ch);
            for (row, bits) in g.iter().enumerate() {
                for col in 0..5 {
                    if bits & (0x10 >> col) != 0 {
                        self.rect(
                            cx + col * scale,
                            y + row as i64 * scale,
                            cx + col * scale + scale - 1,
                            y + row as i64 * scale + scale - 1,
                            c,
                        );
                    }
                }
            }
            cx += 6 * scale;
        }
    }

    fn text_width(s: &str, scale: i64) -> i64 {
        s.chars().count() as i64 * 6 * scale
    }
}

/// A "nice" axis maximum at or above `v`.
fn nice_max(v: f64) -> f64 {
    if v <= 0.0 {
        return 1.0;
    }
    let p = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if m * p >= v {
            return m * p;
        }
    }
    10.0 * p
}

fn label(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.0}k", v / 1e3)
    } else if v == v.trunc() {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// Forwarded packets/s (blue, left axis) and loss % (red, right axis) against the
/// subscriber count.
pub fn ramp_chart(title: &str, points: &[Point]) -> Vec<u8> {
    let mut c = Canvas::new();
    let (l, r, t, b) = (90i64, W as i64 - 80, 50i64, H as i64 - 60);
    c.text(l, 15, title, 1, 2);
    let xmax = nice_max(points.iter().map(|p| p.x).fold(0.0, f64::max));
    let ymax = nice_max(points.iter().map(|p| p.pps).fold(0.0, f64::max));
    let lmax = nice_max(
        points
            .iter()
            .map(|p| p.loss_percent)
            .fold(0.0, f64::max)
            .max(1.0),
    );
    for i in 0..=5 {
        let y = b - (b - t) * i / 5;
        c.line((l, y), (r, y), 2, 1);
        let yl = label(ymax * i as f64 / 5.0);
        c.text(l - 8 - Canvas::text_width(&yl, 2), y - 7, &yl, 3, 2);
        let ll = label(lmax * i as f64 / 5.0);
        c.text(r + 8, y - 7, &ll, 4, 2);
        let x = l + (r - l) * i / 5;
        let xl = label(xmax * i as f64 / 5.0);
        c.text(x - Canvas::text_width(&xl, 2) / 2, b + 10, &xl, 1, 2);
    }
    c.line((l, t), (l, b), 1, 2);
    c.line((l, b), (r, b), 1, 2);
    c.line((r, t), (r, b), 1, 2);
    c.text(l, H as i64 - 25, "SUBSCRIBERS", 1, 2);
    c.text(l + 200, H as i64 - 25, "FORWARDED PKT/S", 3, 2);
    c.text(l + 420, H as i64 - 25, "LOSS %", 4, 2);
    let at = |x: f64, y: f64, max: f64| {
        (
            l + ((r - l) as f64 * x / xmax) as i64,
            b - ((b - t) as f64 * (y / max).min(1.0)) as i64,
        )
    };
    for (series, color) in [(0, 3u8), (1, 4u8)] {
        let pts: Vec<(i64, i64)> = points
            .iter()
            .map(|p| {
                if series == 0 {
                    at(p.x, p.pps, ymax)
                } else {
                    at(p.x, p.loss_percent, lmax)
                }
            })
            .collect();
        for w in pts.windows(2) {
            c.line(w[0], w[1], color, 3);
        }
        for p in &pts {
            c.rect(p.0 - 3, p.1 - 3, p.0 + 3, p.1 + 3, color);
        }
    }
    encode_png(&c.px, W, H, &PALETTE)
}

/// Grouped bars: for each row label, one bar per series (each group scaled to its own
/// largest value; the value is written above each bar).
pub fn bar_chart(title: &str, series: &[&str], rows: &[(String, Vec<f64>)]) -> Vec<u8> {
    let mut c = Canvas::new();
    let (l, r, t, b) = (30i64, W as i64 - 30, 80i64, H as i64 - 50);
    c.text(l, 15, title, 1, 2);
    for (i, s) in series.iter().enumerate() {
        let x = l + 200 * i as i64;
        c.rect(x, 47, x + 14, 61, 3 + (i % 3) as u8);
        c.text(x + 22, 48, s, 1, 2);
    }
    c.line((l, b), (r, b), 1, 2);
    let gw = (r - l) / rows.len().max(1) as i64;
    for (g, (name, values)) in rows.iter().enumerate() {
        let x0 = l + gw * g as i64;
        let max = values.iter().copied().fold(0.0, f64::max).max(1e-12);
        let bw = (gw - 30) / values.len().max(1) as i64;
        for (i, v) in values.iter().enumerate() {
            let h = ((b - t - 30) as f64 * (v / max)) as i64;
            let bx = x0 + 15 + bw * i as i64;
            c.rect(bx + 3, b - h, bx + bw - 3, b - 1, 3 + (i % 3) as u8);
            let vl = label(*v);
            c.text(
                bx + bw / 2 - Canvas::text_width(&vl, 1) / 2,
                b - h - 12,
                &vl,
                1,
                1,
            );
        }
        c.text(x0 + 15, b + 12, name, 1, 1);
    }
    encode_png(&c.px, W, H, &PALETTE)
}

// ----- PNG -------------------------------------------------------------------------------

fn crc32(data: &[u8], mut crc: u32) -> u32 {
    crc = !crc;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn adler32(data: &[u8]) -> u32 {
    let (mut a, mut b) = (1u32, 0u32);
    for chunk in data.chunks(5552) {
        for &x in chunk {
            a += u32::from(x);
            b += a;
        }
        a %= 65521;
        b %= 65521;
    }
    (b << 16) | a
}

struct Bits {
    out: Vec<u8>,
    acc: u32,
    n: u32,
}

impl Bits {
    /// Writes `len` bits of `v`, least significant first.
    fn put(&mut self, v: u32, len: u32) {
        self.acc |= v << self.n;
        self.n += len;
        while self.n >= 8 {
            self.out.push(self.acc as u8);
            self.acc >>= 8;
            self.n -= 8;
        }
    }

    /// Writes a Huffman code (most significant bit first).
    fn code(&mut self, code: u32, len: u32) {
        let mut rev = 0;
        for i in 0..len {
            rev |= ((code >> i) & 1) << (len - 1 - i);
        }
        self.put(rev, len);
    }

    fn literal(&mut self, v: u32) {
        match v {
            0..=143 => self.code(0x30 + v, 8),
            144..=255 => self.code(0x190 + v - 144, 9),
            256..=279 => self.code(v - 256, 7),
            _ => self.code(0xC0 + v - 280, 8),
        }
    }

    /// A match of `len` (3..=258) at distance 1.
    fn run(&mut self, len: u32) {
        const BASE: [u32; 29] = [
            3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99,
            115, 131, 163, 195, 227, 258,
        ];
        const EXTRA: [u32; 29] = [
            0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0,
        ];
        let i = BASE.iter().rposition(|&b| b <= len).expect("len >= 3");
        self.literal(257 + i as u32);
        self.put(len - BASE[i], EXTRA[i]);
        self.code(0, 5); // distance code 0: distance 1
    }
}

/// Deflate (fixed Huffman, runs as distance-1 matches) in a zlib wrapper.
fn zlib(data: &[u8]) -> Vec<u8> {
    let mut bits = Bits {
        out: vec![0x78, 0x01],
        acc: 0,
        n: 0,
    };
    bits.put(1, 1); // final block
    bits.put(1, 2); // fixed Huffman
    let mut i = 0;
    while i < data.len() {
        if i > 0 {
            let prev = data[i - 1];
            let mut n = 0;
            while i + n < data.len() && n < 258 && data[i + n] == prev {
                n += 1;
            }
            if n >= 3 {
                bits.run(n as u32);
                i += n;
                continue;
            }
        }
        bits.literal(u32::from(data[i]));
        i += 1;
    }
    bits.literal(256);
    if bits.n > 0 {
        bits.put(0, 8 - bits.n);
    }
    let mut out = bits.out;
    out.extend_from_slice(&adler32(data).to_be_bytes());
    out
}

/// An 8-bit indexed-colour PNG.
pub fn encode_png(px: &[u8], w: usize, h: usize, palette: &[[u8; 3]]) -> Vec<u8> {
    let mut raw = Vec::with_capacity((w + 1) * h);
    for row in px.chunks(w) {
        raw.push(0); // filter: none
        raw.extend_from_slice(row);
    }
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut chunk = |kind: &[u8; 4], data: &[u8]| {
        png.extend_from_slice(&(data.len() as u32).to_be_bytes());
        png.extend_from_slice(kind);
        png.extend_from_slice(data);
        let crc = crc32(data, crc32(kind, 0));
        png.extend_from_slice(&crc.to_be_bytes());
    };
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&(w as u32).to_be_bytes());
    ihdr.extend_from_slice(&(h as u32).to_be_bytes());
    ihdr.extend_from_slice(&[8, 3, 0, 0, 0]);
    chunk(b"IHDR", &ihdr);
    let plte: Vec<u8> = palette.iter().flatten().copied().collect();
    chunk(b"PLTE", &plte);
    chunk(b"IDAT", &zlib(&raw));
    chunk(b"IEND", &[]);
    png
}

/// A 5×7 glyph (rows top to bottom, bit 4 = leftmost column). Lower case is drawn as
/// upper case; unknown characters as a box.
fn glyph(c: char) -> [u8; 7] {
    match c.to_ascii_uppercase() {
        ' ' => [0; 7],
        '0' => [0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E],
        '1' => [0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E],
        '2' => [0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F],
        '3' => [0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E],
        '4' => [0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02],
        '5' => [0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E],
        '6' => [0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E],
        '7' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08],
        '8' => [0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E],
        '9' => [0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C],
        'A' => [0x0E, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'B' => [0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E],
        'C' => [0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E],
        'D' => [0x1C, 0x12, 0x11, 0x11, 0x11, 0x12, 0x1C],
        'E' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F],
        'F' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10],
        'G' => [0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F],
        'H' => [0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'I' => [0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E],
        'J' => [0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C],
        'K' => [0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11],
        'L' => [0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F],
        'M' => [0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11],
        'N' => [0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11],
        'O' => [0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'P' => [0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10],
        'Q' => [0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D],
        'R' => [0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11],
        'S' => [0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E],
        'T' => [0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04],
        'U' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'V' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04],
        'W' => [0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A],
        'X' => [0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11],
        'Y' => [0x11, 0x11, 0x11, 0x0A, 0x04, 0x04, 0x04],
        'Z' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F],
        '.' => [0, 0, 0, 0, 0, 0x0C, 0x0C],
        ',' => [0, 0, 0, 0, 0x0C, 0x04, 0x08],
        ':' => [0, 0x0C, 0x0C, 0, 0x0C, 0x0C, 0],
        '-' => [0, 0, 0, 0x1F, 0, 0, 0],
        '+' => [0, 0x04, 0x04, 0x1F, 0x04, 0x04, 0],
        '/' => [0x01, 0x01, 0x02, 0x04, 0x08, 0x10, 0x10],
        '%' => [0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03],
        '(' => [0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02],
        ')' => [0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08],
        '=' => [0, 0, 0x1F, 0, 0x1F, 0, 0],
        '_' => [0, 0, 0, 0, 0, 0, 0x1F],
        '>' => [0x08, 0x04, 0x02, 0x01, 0x02, 0x04, 0x08],
        _ => [0x1F, 0x11, 0x11, 0x11, 0x11, 0x11, 0x1F],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Inflates a stream of fixed-Huffman blocks with distance-1 matches only (enough to
    /// check what [`zlib`] writes).
    fn inflate_fixed(z: &[u8]) -> Vec<u8> {
        let data = &z[2..z.len() - 4];
        let mut pos = 0usize;
        let bit = |pos: &mut usize| {
            let b = (data[*pos / 8] >> (*pos % 8)) & 1;
            *pos += 1;
            u32::from(b)
        };
        let bits = |pos: &mut usize, n: u32| (0..n).fold(0, |v, i| v | (bit(pos) << i));
        let huff = |pos: &mut usize, n: u32| (0..n).fold(0, |v, _| (v << 1) | bit(pos));
        assert_eq!(bits(&mut pos, 3), 0b011);
        let mut out: Vec<u8> = Vec::new();
        loop {
            let mut code = huff(&mut pos, 7);
            let sym = if code <= 0x17 {
                code + 256
            } else {
                code = (code << 1) | bit(&mut pos);
                if (0x30..=0xBF).contains(&code) {
                    code - 0x30
                } else if (0xC0..=0xC7).contains(&code) {
                    code - 0xC0 + 280
                } else {
                    code = (code << 1) | bit(&mut pos);
                    code - 0x190 + 144
                }
            };
            match sym {
                0..=255 => out.push(sym as u8),
                256 => break,
                _ => {
                    const BASE: [u32; 29] = [
                        3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59,
                        67, 83, 99, 115, 131, 163, 195, 227, 258,
                    ];
                    const EXTRA: [u32; 29] = [
                        0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5,
                        5, 5, 5, 0,
                    ];
                    let i = (sym - 257) as usize;
                    let len = BASE[i] + bits(&mut pos, EXTRA[i]);
                    assert_eq!(huff(&mut pos, 5), 0, "distance 1");
                    let last = *out.last().expect("a match after a literal");
                    out.extend(std::iter::repeat_n(last, len as usize));
                }
            }
        }
        assert_eq!(
            u32::from_be_bytes(z[z.len() - 4..].try_into().unwrap()),
            adler32(&out)
        );
        out
    }

    #[test]
    fn deflate_round_trips() {
        let mut data = vec![0u8; 1000];
        data.extend((0..=255u8).cycle().take(700));
        data.extend(std::iter::repeat_n(7u8, 300));
        assert_eq!(inflate_fixed(&zlib(&data)), data);
    }

    #[test]
    fn charts_are_pngs() {
        let png = ramp_chart(
            "t",
            &[
                Point {
                    x: 10.0,
                    pps: 1000.0,
                    loss_percent: 0.0,
                },
                Point {
                    x: 20.0,
                    pps: 2000.0,
                    loss_percent: 0.5,
                },
            ],
        );
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        assert_eq!(crc32(b"IEND", 0), 0xAE42_6082);
        assert!(png.len() < 100_000);
    }
}
