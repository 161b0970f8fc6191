//! Duplicate images: a perceptual hash and an exact key per image, and the
//! pairs of images within a Hamming distance, found without comparing all
//! pairs. A building block: it knows nothing of stages or tables; the
//! `duplicates` stage feeds it decoded images and writes what it finds.
//!
//! **pHash**, exactly as the Python `imagehash` library (4.3) defines
//! `imagehash.phash(image)` (hash_size 8, highfreq_factor 4), so that a
//! user's hashes and ours agree bit for bit where the pixels do:
//! 1. greyscale as PIL's `convert('L')` does it:
//!    `(19595 R + 38470 G + 7471 B + 0x8000) >> 16`;
//! 2. resized to 32x32 with PIL's `LANCZOS` (3 lobes, anti-aliased),
//!    whose arithmetic is reproduced here to the rounding (`mod pil`); an
//!    image already 32x32 is not resampled, as PIL returns a copy;
//! 3. the unnormalised 2-D DCT-II (`scipy.fftpack.dct` along axis 0, then
//!    axis 1) of those 32x32 values, of which only the top-left 8x8 block of
//!    lowest frequencies is kept, **DC coefficient included** (the original
//!    pHash of Zauner 2010 and hackerfactor's description drop the DC term
//!    before taking the median; imagehash does not, and neither do we);
//! 4. each of the 64 coefficients compared with their median (numpy's: the
//!    mean of the 32nd and 33rd smallest): bit = coefficient > median;
//! 5. the bits in row-major order, the first the most significant, so that
//!    `format!("{:016x}", h)` is `str(imagehash.phash(img))`.
//!
//! The 32x32 greyscale pixels are therefore PIL's exactly; only the DCT's
//! floating-point rounding (scipy's FFT against our direct sums) can make a
//! bit differ, for a coefficient within ~1e-12 of the median
//! (`tests/duplicates.rs` compares with imagehash on real images).
//!
//! **Exact key**: the first 16 bytes of the blake3 hash of the decoded RGB
//! pixels (and the size): equal keys are the same picture, whatever the file
//! format or compression that stored it.
//!
//! **Search** ([`within`], [`across`]): pairs at Hamming distance <= t by
//! multi-index hashing (Norouzi, Punjani and Fleet, "Fast Search in Hamming
//! Space with Multi-Index Hashing", CVPR 2012): the 64 bits are cut into
//! t + 1 bands; two hashes within distance t agree exactly on at least one
//! band (pigeonhole), so only hashes sharing a band value are compared, and
//! a pair found in several bands is kept in the first only. With t = 4 that
//! is 5 bands of 12-13 bits: for n hashes spread evenly, each is compared
//! with ~5 n / 4096 others instead of n. Images sharing a hash are grouped
//! first, so a thousand copies of one placeholder image cost a thousand
//! pairs, not half a million. Every result is sorted, so the output does
//! not depend on the number of threads.
use rayon::prelude::*;

use image::RgbImage;

/// Side of the greyscale image the DCT reads (hash_size 8 x highfreq_factor 4).
const SIDE: usize = 32;
/// Side of the low-frequency block kept (hash_size).
const LOW: usize = 8;

/// The exact key of a decoded image.
pub type Key = [u8; 16];

/// One image's hashes: its row id, pHash and exact key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub id: u64,
    pub phash: u64,
    pub key: Key,
}

impl Entry {
    /// The hashes of a decoded image.
    pub fn of(id: u64, img: &RgbImage) -> Entry {
        Entry {
            id,
            phash: phash(img),
            key: key(img),
        }
    }
}

/// Which table the other row of a pair is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Side {
    /// The same table (an earlier row).
    Within,
    /// The reference table.
    Reference,
}

/// Row `id` duplicates row `other_id` (of the same table, an earlier row, or
/// of the reference) at Hamming `distance`; `exact` when their pixels are
/// the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Pair {
    pub id: u64,
    pub side: Side,
    pub other_id: u64,
    pub distance: u32,
    pub exact: bool,
}

/// Hamming distance of two hashes.
pub fn distance(a: u64, b: u64) -> u32 {
    (a ^ b).count_ones()
}

/// The exact key: blake3 of the size and the RGB pixels, first 16 bytes.
pub fn key(img: &RgbImage) -> Key {
    let mut h = blake3::Hasher::new();
    h.update(&img.width().to_le_bytes());
    h.update(&img.height().to_le_bytes());
    h.update(img.as_raw());
    let mut k = [0u8; 16];
    k.copy_from_slice(&h.finalize().as_bytes()[..16]);
    k
}

/// PIL's `convert('L')`.
fn grey(img: &RgbImage) -> Vec<u8> {
    img.pixels()
        .map(|p| {
            let [r, g, b] = p.0;
            ((r as u32 * 19595 + g as u32 * 38470 + b as u32 * 7471 + 0x8000) >> 16) as u8
        })
        .collect()
}

/// The greyscale image at 32x32, resampled as PIL's `resize(..., LANCZOS)`.
fn grey32(img: &RgbImage) -> Vec<u8> {
    let g = grey(img);
    let (w, h) = (img.width() as usize, img.height() as usize);
    if w == SIDE && h == SIDE {
        return g; // PIL returns a copy
    }
    pil::resize_lanczos(&g, w, h, SIDE, SIDE)
}

/// Pillow's resampling of an 8-bit single-channel image (`libImaging/
/// Resample.c`), reproduced step for step so that its rounding is ours:
/// coefficients of the anti-aliased kernel in `f64`, normalised, then in
/// 22-bit fixed point; a horizontal pass over the rows the vertical pass
/// will read, rounded to 8 bits, then the vertical pass.
mod pil {
    const PRECISION_BITS: u32 = 32 - 8 - 2;

    fn sinc(x: f64) -> f64 {
        if x == 0.0 {
            return 1.0;
        }
        let x = x * std::f64::consts::PI;
        x.sin() / x
    }

    fn lanczos(x: f64) -> f64 {
        if (-3.0..3.0).contains(&x) {
            sinc(x) * sinc(x / 3.0)
        } else {
            0.0
        }
    }

    /// Per output pixel: the first input pixel, the count, and the
    /// fixed-point weights (`precompute_coeffs` + `normalize_coeffs_8bpc`).
    fn coeffs(in_size: usize, out_size: usize) -> Vec<(usize, usize, Vec<i32>)> {
        let scale = in_size as f64 / out_size as f64;
        let filterscale = scale.max(1.0);
        let support = 3.0 * filterscale;
        (0..out_size)
            .map(|xx| {
                let center = (xx as f64 + 0.5) * scale;
                let ss = 1.0 / filterscale;
                // C's (int) truncates; the values are >= -0.5 here, so clamping first is the same.
                let xmin = ((center - support + 0.5) as i64).max(0) as usize;
                let xmax = (((center + support + 0.5) as i64) as usize).min(in_size) - xmin;
                let w: Vec<f64> = (0..xmax)
                    .map(|x| lanczos((x as f64 + xmin as f64 - center + 0.5) * ss))
                    .collect();
                let ww: f64 = w.iter().sum();
                let fixed = w
                    .iter()
                    .map(|&k| {
                        let k = if ww != 0.0 { k / ww } else { k };
                        let v = k * (1u32 << PRECISION_BITS) as f64;
                        (if v < 0.0 { v - 0.5 } else { v + 0.5 }) as i32
                    })
                    .collect();
                (xmin, xmax, fixed)
            })
            .collect()
    }

    fn clip8(ss: i32) -> u8 {
        (ss >> PRECISION_BITS).clamp(0, 255) as u8
    }

    /// `src` (`w`x`h`, one byte a pixel) resized to `ow`x`oh`.
    pub fn resize_lanczos(src: &[u8], w: usize, h: usize, ow: usize, oh: usize) -> Vec<u8> {
        let horiz = coeffs(w, ow);
        let vert = coeffs(h, oh);
        // The rows the vertical pass reads.
        let first = vert[0].0;
        let last = vert[oh - 1].0 + vert[oh - 1].1;
        let (tmp, tw, row0) = if w != ow {
            let mut tmp = vec![0u8; ow * (last - first)];
            for (y, out_row) in tmp.chunks_exact_mut(ow).enumerate() {
                let row = &src[(y + first) * w..(y + first + 1) * w];
                for (o, (xmin, n, k)) in out_row.iter_mut().zip(&horiz) {
                    let mut ss = 1i32 << (PRECISION_BITS - 1);
                    for (p, kk) in row[*xmin..xmin + n].iter().zip(k) {
                        ss += *p as i32 * kk;
                    }
                    *o = clip8(ss);
                }
            }
            (tmp, ow, first)
        } else {
            (src.to_vec(), w, 0)
        };
        if h == oh {
            return tmp;
        }
        let mut out = vec![0u8; ow * oh];
        for (yy, (ymin, n, k)) in vert.iter().enumerate() {
            for xx in 0..tw {
                let mut ss = 1i32 << (PRECISION_BITS - 1);
                for (y, kk) in k.iter().enumerate().take(*n) {
                    ss += tmp[(ymin - row0 + y) * tw + xx] as i32 * kk;
                }
                out[yy * ow + xx] = clip8(ss);
            }
        }
        out
    }
}

/// `2 cos(pi u (2x + 1) / 64)` for u < 8, x < 32: scipy's unnormalised
/// DCT-II basis for the kept frequencies.
fn basis() -> &'static [[f64; SIDE]; LOW] {
    static B: std::sync::OnceLock<[[f64; SIDE]; LOW]> = std::sync::OnceLock::new();
    B.get_or_init(|| {
        let mut b = [[0.0; SIDE]; LOW];
        for (u, row) in b.iter_mut().enumerate() {
            for (x, v) in row.iter_mut().enumerate() {
                *v = 2.0
                    * (std::f64::consts::PI * u as f64 * (2 * x + 1) as f64 / (2 * SIDE) as f64)
                        .cos();
            }
        }
        b
    })
}

/// imagehash's pHash of an RGB image (see the module doc).
pub fn phash(img: &RgbImage) -> u64 {
    let px = grey32(img);
    let b = basis();
    // Along axis 0 (down the columns): t[u][y] = sum_x b[u][x] px[x][y].
    let mut t = [[0.0f64; SIDE]; LOW];
    for (u, tu) in t.iter_mut().enumerate() {
        for (x, row) in px.chunks_exact(SIDE).enumerate() {
            let w = b[u][x];
            for (acc, &p) in tu.iter_mut().zip(row) {
                *acc += w * p as f64;
            }
        }
    }
    // Then along axis 1: c[u][v] = sum_y t[u][y] b[v][y].
    let mut c = [0.0f64; LOW * LOW];
    for u in 0..LOW {
        for v in 0..LOW {
            c[u * LOW + v] = t[u].iter().zip(&b[v]).map(|(a, w)| a * w).sum();
        }
    }
    let mut sorted = c;
    sorted.sort_by(f64::total_cmp);
    let median = (sorted[31] + sorted[32]) / 2.0;
    c.iter()
        .fold(0u64, |h, &v| (h << 1) | u64::from(v > median))
}

/// The bit ranges of the t + 1 bands (as even as 64 bits allow).
fn bands(t: u32) -> Vec<(u32, u32)> {
    let n = t + 1;
    (0..n).map(|b| (b * 64 / n, (b + 1) * 64 / n)).collect()
}

fn band(h: u64, (lo, hi): (u32, u32)) -> u64 {
    let width = hi - lo;
    let mask = if width >= 64 {
        u64::MAX
    } else {
        (1u64 << width) - 1
    };
    (h >> lo) & mask
}

/// The first band on which two hashes agree (every pair within distance t
/// has one).
fn first_shared(a: u64, b: u64, bands: &[(u32, u32)]) -> Option<usize> {
    bands.iter().position(|&r| band(a, r) == band(b, r))
}

/// Images sharing one pHash: their entries, sorted by (key, id).
struct Group<'a> {
    phash: u64,
    /// The lowest id: the group's representative.
    first: u64,
    members: Vec<&'a Entry>,
}

/// `entries` grouped by pHash, in pHash order.
fn groups(entries: &[Entry]) -> Vec<Group<'_>> {
    let mut sorted: Vec<&Entry> = entries.iter().collect();
    sorted.sort_unstable_by_key(|e| (e.phash, e.key, e.id));
    let mut out: Vec<Group> = Vec::new();
    for e in sorted {
        match out.last_mut() {
            Some(g) if g.phash == e.phash => {
                g.first = g.first.min(e.id);
                g.members.push(e);
            }
            _ => out.push(Group {
                phash: e.phash,
                first: e.id,
                members: vec![e],
            }),
        }
    }
    out
}

/// Pairs (i, j), i < j, of `hashes` within distance `t`, each once.
fn near_pairs(hashes: &[u64], t: u32) -> Vec<(usize, usize, u32)> {
    if t == 0 {
        return Vec::new(); // distinct hashes are at least 1 apart
    }
    let bands = bands(t);
    let mut out = Vec::new();
    for (bi, &range) in bands.iter().enumerate() {
        let mut by_band: Vec<(u64, usize)> = hashes
            .iter()
            .enumerate()
            .map(|(i, &h)| (band(h, range), i))
            .collect();
        by_band.par_sort_unstable();
        let runs: Vec<&[(u64, usize)]> = by_band.chunk_by(|a, b| a.0 == b.0).collect();
        let found: Vec<(usize, usize, u32)> = runs
            .par_iter()
            .flat_map_iter(|run| {
                let mut v = Vec::new();
                for (k, &(_, i)) in run.iter().enumerate() {
                    for &(_, j) in &run[k + 1..] {
                        let d = distance(hashes[i], hashes[j]);
                        if d <= t && first_shared(hashes[i], hashes[j], &bands) == Some(bi) {
                            v.push((i.min(j), i.max(j), d));
                        }
                    }
                }
                v
            })
            .collect();
        out.extend(found);
    }
    out
}

/// Duplicates inside one table, each pair as (later row, earlier row):
/// - rows sharing a pHash are paired with one earlier row of their group
///   only: the first with the same pixels (`exact`), else the group's first
///   row (near, distance 0); so n copies give n - 1 pairs;
/// - groups whose pHashes are within `t` of each other are paired by their
///   first rows (near, distance >= 1).
///
/// A row of a group other than its first thus always has a distance-0 pair,
/// and only first rows have pairs of distance >= 1.
pub fn within(entries: &[Entry], t: u32) -> Vec<Pair> {
    let groups = groups(entries);
    let mut out = Vec::new();
    for g in &groups {
        // Members sorted by (key, id): the first of each run of equal keys
        // holds those pixels first.
        let mut run_first = None;
        let mut run_key = None;
        for e in &g.members {
            if run_key != Some(e.key) {
                run_key = Some(e.key);
                run_first = Some(e.id);
            }
            let same = run_first.expect("set above");
            if e.id == g.first {
                continue;
            }
            let (other_id, exact) = if same != e.id {
                (same, true)
            } else {
                (g.first, false)
            };
            out.push(Pair {
                id: e.id,
                side: Side::Within,
                other_id,
                distance: 0,
                exact,
            });
        }
    }
    let hashes: Vec<u64> = groups.iter().map(|g| g.phash).collect();
    for (i, j, d) in near_pairs(&hashes, t) {
        let (a, b) = (groups[i].first, groups[j].first);
        out.push(Pair {
            id: a.max(b),
            side: Side::Within,
            other_id: a.min(b),
            distance: d,
            exact: false,
        });
    }
    out.par_sort_unstable();
    out
}

/// Rows of `table` that duplicate rows of `reference`: every row of
/// `table` is paired with each reference pHash group within `t`, by the
/// reference row with the same pixels (`exact`) when there is one, else by
/// the group's first row.
pub fn across(table: &[Entry], reference: &[Entry], t: u32) -> Vec<Pair> {
    let refs = groups(reference);
    let bands = bands(t);
    // Per band, the reference groups sorted by their band value.
    let index: Vec<Vec<(u64, usize)>> = bands
        .iter()
        .map(|&r| {
            let mut v: Vec<(u64, usize)> = refs
                .iter()
                .enumerate()
                .map(|(i, g)| (band(g.phash, r), i))
                .collect();
            v.par_sort_unstable();
            v
        })
        .collect();
    let mine = groups(table);
    let mut out: Vec<Pair> = mine
        .par_iter()
        .flat_map_iter(|g| {
            let mut matches: Vec<(usize, u32)> = Vec::new();
            for (bi, &r) in bands.iter().enumerate() {
                let v = band(g.phash, r);
                let idx = &index[bi];
                let start = idx.partition_point(|&(b, _)| b < v);
                for &(_, ri) in idx[start..].iter().take_while(|&&(b, _)| b == v) {
                    let h = refs[ri].phash;
                    let d = distance(g.phash, h);
                    if d <= t && first_shared(g.phash, h, &bands) == Some(bi) {
                        matches.push((ri, d));
                    }
                }
            }
            let mut pairs = Vec::new();
            for e in &g.members {
                for &(ri, d) in &matches {
                    let rg = &refs[ri];
                    let same = if d == 0 {
                        rg.members.iter().find(|m| m.key == e.key).map(|m| m.id)
                    } else {
                        None
                    };
                    pairs.push(Pair {
                        id: e.id,
                        side: Side::Reference,
                        other_id: same.unwrap_or(rg.first),
                        distance: d,
                        exact: same.is_some(),
                    });
                }
            }
            pairs
        })
        .collect();
    out.par_sort_unstable();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(id: u64, phash: u64, k: u8) -> Entry {
        Entry {
            id,
            phash,
            key: [k; 16],
        }
    }

    /// Every pair within `t`, the slow way, as (larger id, smaller id, d).
    fn brute(hashes: &[u64], t: u32) -> Vec<(usize, usize, u32)> {
        let mut v = Vec::new();
        for i in 0..hashes.len() {
            for j in i + 1..hashes.len() {
                let d = distance(hashes[i], hashes[j]);
                if d <= t {
                    v.push((i, j, d));
                }
            }
        }
        v
    }

    #[test]
    fn multi_index_search_finds_exactly_the_brute_force_pairs() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        // Clusters of nearby hashes among random ones, so every distance occurs.
        let mut hashes: Vec<u64> = Vec::new();
        for _ in 0..300 {
            let base: u64 = rng.random();
            hashes.push(base);
            for _ in 0..rng.random_range(0..4) {
                let mut h = base;
                for _ in 0..rng.random_range(1..9) {
                    h ^= 1 << rng.random_range(0..64);
                }
                hashes.push(h);
            }
        }
        hashes.sort_unstable();
        hashes.dedup();
        for t in [0, 1, 3, 4, 7, 10] {
            let mut got = near_pairs(&hashes, t);
            got.sort_unstable();
            assert_eq!(got, brute(&hashes, t), "t = {t}");
        }
    }

    #[test]
    fn copies_are_grouped_and_paired_with_one_earlier_row() {
        // Rows 0, 3, 5 share a hash; 3 has 0's pixels; 5 has new pixels.
        // Row 7 is 2 bits from them; row 9 is far.
        let h = 0xF0F0_F0F0_1234_5678u64;
        let entries = [
            e(5, h, 2),
            e(0, h, 1),
            e(3, h, 1),
            e(7, h ^ 0b101, 3),
            e(9, !h, 4),
        ];
        let pairs = within(&entries, 4);
        let got: Vec<(u64, u64, u32, bool)> = pairs
            .iter()
            .map(|p| (p.id, p.other_id, p.distance, p.exact))
            .collect();
        assert_eq!(
            got,
            vec![(3, 0, 0, true), (5, 0, 0, false), (7, 0, 2, false)]
        );
        assert!(within(&entries, 1).iter().all(|p| p.id != 7));
    }

    #[test]
    fn rows_duplicating_the_reference_are_paired_with_it() {
        let h = 0x0123_4567_89AB_CDEFu64;
        let table = [e(0, h, 1), e(1, h, 9), e(2, h ^ 1, 2), e(3, !h, 3)];
        let reference = [e(10, h, 8), e(11, h, 9), e(12, h ^ 0b11000, 5)];
        let got: Vec<(u64, u64, u32, bool)> = across(&table, &reference, 2)
            .iter()
            .map(|p| (p.id, p.other_id, p.distance, p.exact))
            .collect();
        // 10 and 11 share a hash (a group, first row 10); 12 is 2 bits off
        // it and 3 bits off row 2: beyond the distance.
        assert_eq!(
            got,
            vec![
                (0, 10, 0, false),
                (0, 12, 2, false),
                (1, 11, 0, true),
                (1, 12, 2, false),
                (2, 10, 1, false),
            ]
        );
    }

    #[test]
    fn phash_survives_a_resize_and_tells_a_negative_apart() {
        // Smooth blobs at several scales: energy in every low frequency.
        let f = |x: u32, y: u32| {
            let (x, y) = (x as f64 / 3.0, y as f64 / 3.0);
            let v = 128.0
                + 60.0 * (x / 5.0).sin() * (y / 7.0).cos()
                + 40.0 * ((x + 2.0 * y) / 9.0).sin();
            v.clamp(0.0, 255.0) as u8
        };
        let img = RgbImage::from_fn(96, 96, |x, y| image::Rgb([f(x, y), f(y, x), f(x, x)]));
        let neg = RgbImage::from_fn(96, 96, |x, y| {
            image::Rgb(img.get_pixel(x, y).0.map(|v| 255 - v))
        });
        let small = image::imageops::resize(&img, 64, 64, image::imageops::FilterType::Triangle);
        let (a, b) = (phash(&img), phash(&neg));
        assert!(
            distance(a, phash(&small)) <= 2,
            "{a:016x} {:016x}",
            phash(&small)
        );
        assert!(
            distance(a, b) >= 32,
            "{a:016x} {b:016x}: a negative is another picture"
        );
        assert_ne!(key(&img), key(&small));
        assert_eq!(key(&img), key(&img.clone()));
    }

    #[test]
    fn bands_cover_the_64_bits() {
        for t in 0..=16 {
            let b = bands(t);
            assert_eq!(b.len() as u32, t + 1);
            assert_eq!(b[0].0, 0);
            assert_eq!(b.last().unwrap().1, 64);
            assert!(b.windows(2).all(|w| w[0].1 == w[1].0));
        }
        assert_eq!(band(u64::MAX, (0, 64)), u64::MAX);
    }
}
