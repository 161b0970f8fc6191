//! Scores labels against true labels: for clusters, accuracy after the best
//! one-to-one matching of clusters to classes (Hungarian algorithm), NMI
//! (arithmetic normalisation, as scikit-learn's default), adjusted Rand index
//! and purity; for predicted class labels, accuracy and per-class precision
//! and recall. Both start from a [`Contingency`] table, which also draws as
//! the confusion-matrix heat map.
use image::RgbImage;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::plot;

/// Counts of (true class, label) pairs: `n_true` rows x `n_pred` columns.
#[derive(Debug, Clone, PartialEq)]
pub struct Contingency {
    pub n_true: usize,
    pub n_pred: usize,
    counts: Vec<u64>,
}

impl Contingency {
    /// Tallies `truth[i]` against `pred[i]`; every value must be below its count.
    pub fn new(truth: &[usize], pred: &[usize], n_true: usize, n_pred: usize) -> Result<Self> {
        if truth.len() != pred.len() {
            return Err(Error::invalid(format!(
                "contingency: {} true labels but {} predicted labels",
                truth.len(),
                pred.len()
            )));
        }
        let mut counts = vec![0u64; n_true * n_pred];
        for (&t, &p) in truth.iter().zip(pred) {
            if t >= n_true || p >= n_pred {
                return Err(Error::invalid(format!(
                    "contingency: label pair ({t}, {p}) outside {n_true} classes x {n_pred} labels"
                )));
            }
            counts[t * n_pred + p] += 1;
        }
        Ok(Contingency {
            n_true,
            n_pred,
            counts,
        })
    }

    pub fn get(&self, t: usize, p: usize) -> u64 {
        self.counts[t * self.n_pred + p]
    }

    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    pub fn row_sums(&self) -> Vec<u64> {
        (0..self.n_true)
            .map(|t| (0..self.n_pred).map(|p| self.get(t, p)).sum())
            .collect()
    }

    pub fn col_sums(&self) -> Vec<u64> {
        (0..self.n_pred)
            .map(|p| (0..self.n_true).map(|t| self.get(t, p)).sum())
            .collect()
    }

    /// The table as rows of f64, columns in `order` (all columns when `None`).
    pub fn rows(&self, order: Option<&[usize]>) -> Vec<Vec<f64>> {
        let all: Vec<usize> = (0..self.n_pred).collect();
        let order = order.unwrap_or(&all);
        (0..self.n_true)
            .map(|t| order.iter().map(|&p| self.get(t, p) as f64).collect())
            .collect()
    }
}

/// The assignment of rows to columns that maximises the summed weight (each
/// row and column used at most once; with more rows than columns some rows
/// stay unmatched). O(n^2 m): the shortest augmenting path version of the
/// Hungarian algorithm with potentials (Kuhn-Munkres, as in e-maxx).
pub fn max_weight_matching(weights: &[Vec<f64>]) -> Vec<Option<usize>> {
    let n = weights.len();
    let m = weights.iter().map(|r| r.len()).max().unwrap_or(0);
    if n == 0 || m == 0 {
        return vec![None; n];
    }
    let w = |i: usize, j: usize| weights[i].get(j).copied().unwrap_or(0.0);
    if n > m {
        // Solve the transposed problem: the algorithm needs rows <= columns.
        let t: Vec<Vec<f64>> = (0..m).map(|j| (0..n).map(|i| w(i, j)).collect()).collect();
        let cols = max_weight_matching(&t);
        let mut out = vec![None; n];
        for (j, i) in cols.iter().enumerate() {
            if let Some(i) = i {
                out[*i] = Some(j);
            }
        }
        return out;
    }
    let max = (0..n)
        .flat_map(|i| (0..m).map(move |j| (i, j)))
        .map(|(i, j)| w(i, j))
        .fold(f64::MIN, f64::max);
    let cost = |i: usize, j: usize| max - w(i, j);
    // 1-based arrays; index 0 is the virtual start.
    let (mut u, mut v) = (vec![0.0f64; n + 1], vec![0.0f64; m + 1]);
    let mut p = vec![0usize; m + 1];
    let mut way = vec![0usize; m + 1];
    for i in 1..=n {
        p[0] = i;
        let mut j0 = 0usize;
        let mut minv = vec![f64::INFINITY; m + 1];
        let mut used = vec![false; m + 1];
        loop {
            used[j0] = true;
            let i0 = p[j0];
            let mut delta = f64::INFINITY;
            let mut j1 = 0usize;
            for j in 1..=m {
                if !used[j] {
                    let cur = cost(i0 - 1, j - 1) - u[i0] - v[j];
                    if cur < minv[j] {
                        minv[j] = cur;
                        way[j] = j0;
                    }
                    if minv[j] < delta {
                        delta = minv[j];
                        j1 = j;
                    }
                }
            }
            for j in 0..=m {
                if used[j] {
                    u[p[j]] += delta;
                    v[j] -= delta;
                } else {
                    minv[j] -= delta;
                }
            }
            j0 = j1;
            if p[j0] == 0 {
                break;
            }
        }
        loop {
            let j1 = way[j0];
            p[j0] = p[j1];
            j0 = j1;
            if j0 == 0 {
                break;
            }
        }
    }
    let mut out = vec![None; n];
    for j in 1..=m {
        if p[j] != 0 {
            out[p[j] - 1] = Some(j - 1);
        }
    }
    out
}

fn entropy(sums: &[u64], n: f64) -> f64 {
    sums.iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = c as f64 / n;
            -p * p.ln()
        })
        .sum()
}

/// Normalised mutual information, arithmetic mean of the two entropies
/// (scikit-learn's `normalized_mutual_info_score` default).
pub fn nmi(c: &Contingency) -> f64 {
    let n = c.total() as f64;
    if n == 0.0 {
        return 0.0;
    }
    let (rows, cols) = (c.row_sums(), c.col_sums());
    let (hu, hv) = (entropy(&rows, n), entropy(&cols, n));
    let occupied = |s: &[u64]| s.iter().filter(|&&x| x > 0).count();
    // Two single-cluster labellings agree perfectly (scikit-learn's convention).
    if occupied(&rows) <= 1 && occupied(&cols) <= 1 {
        return 1.0;
    }
    let mut mi = 0.0;
    for t in 0..c.n_true {
        for p in 0..c.n_pred {
            let nij = c.get(t, p) as f64;
            if nij > 0.0 {
                mi += nij / n * (n * nij / (rows[t] as f64 * cols[p] as f64)).ln();
            }
        }
    }
    let denom = (hu + hv) / 2.0;
    if denom <= 0.0 {
        0.0
    } else {
        (mi / denom).clamp(0.0, 1.0)
    }
}

fn comb2(x: u64) -> f64 {
    let x = x as f64;
    x * (x - 1.0) / 2.0
}

/// Adjusted Rand index (Hubert and Arabie 1985).
pub fn ari(c: &Contingency) -> f64 {
    let n = c.total();
    let index: f64 = c.counts.iter().map(|&x| comb2(x)).sum();
    let a: f64 = c.row_sums().into_iter().map(comb2).sum();
    let b: f64 = c.col_sums().into_iter().map(comb2).sum();
    let total = comb2(n);
    if total == 0.0 {
        return 1.0;
    }
    let expected = a * b / total;
    let max = (a + b) / 2.0;
    if (max - expected).abs() < f64::EPSILON {
        return 1.0;
    }
    (index - expected) / (max - expected)
}

/// Share of items whose label's majority class is their class.
pub fn purity(c: &Contingency) -> f64 {
    let n = c.total();
    if n == 0 {
        return 0.0;
    }
    let hit: u64 = (0..c.n_pred)
        .map(|p| (0..c.n_true).map(|t| c.get(t, p)).max().unwrap_or(0))
        .sum();
    hit as f64 / n as f64
}

/// The quality of cluster labels against true classes.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterQuality {
    /// Items scored (those with a true label).
    pub n: u64,
    pub classes: usize,
    pub clusters: usize,
    /// Accuracy after matching each cluster to at most one class (Hungarian).
    pub accuracy: f64,
    pub nmi: f64,
    pub ari: f64,
    pub purity: f64,
    /// For each cluster, the class it was matched to.
    pub matching: Vec<Option<usize>>,
}

/// Scores `pred` (cluster indices below `n_pred`) against `truth` (classes below `n_true`).
pub fn cluster_quality(
    truth: &[usize],
    pred: &[usize],
    n_true: usize,
    n_pred: usize,
) -> Result<(ClusterQuality, Contingency)> {
    let c = Contingency::new(truth, pred, n_true, n_pred)?;
    Ok((cluster_quality_of(&c), c))
}

/// [`cluster_quality`] from a contingency table.
pub fn cluster_quality_of(c: &Contingency) -> ClusterQuality {
    // Rows are clusters here, so the matching reads cluster -> class.
    let by_cluster: Vec<Vec<f64>> = (0..c.n_pred)
        .map(|p| (0..c.n_true).map(|t| c.get(t, p) as f64).collect())
        .collect();
    let matching = max_weight_matching(&by_cluster);
    let matched: u64 = matching
        .iter()
        .enumerate()
        .filter_map(|(p, t)| t.map(|t| c.get(t, p)))
        .sum();
    let n = c.total();
    ClusterQuality {
        n,
        classes: c.n_true,
        clusters: c.n_pred,
        accuracy: if n == 0 {
            0.0
        } else {
            matched as f64 / n as f64
        },
        nmi: nmi(c),
        ari: ari(c),
        purity: purity(c),
        matching,
    }
}

/// The column order that puts each class's matched cluster on the diagonal,
/// unmatched clusters last: the readable order for a confusion heat map.
pub fn matched_order(matching: &[Option<usize>], n_true: usize) -> Vec<usize> {
    let mut order: Vec<usize> = Vec::with_capacity(matching.len());
    for t in 0..n_true {
        if let Some(p) = matching.iter().position(|m| *m == Some(t)) {
            order.push(p);
        }
    }
    order.extend((0..matching.len()).filter(|p| matching[*p].is_none()));
    order
}

/// Precision and recall of one class.
#[derive(Debug, Clone, Serialize)]
pub struct ClassScore {
    pub class: usize,
    pub precision: f64,
    pub recall: f64,
    /// Items whose true class this is.
    pub support: u64,
    /// Items predicted as this class.
    pub predicted: u64,
}

/// The quality of predicted class labels against true classes.
#[derive(Debug, Clone, Serialize)]
pub struct PredictionQuality {
    pub n: u64,
    pub accuracy: f64,
    /// Unweighted means over classes that occur (in truth or prediction).
    pub macro_precision: f64,
    pub macro_recall: f64,
    pub per_class: Vec<ClassScore>,
}

/// Scores predicted classes `pred` against `truth`, both below `n_classes`.
pub fn prediction_quality(
    truth: &[usize],
    pred: &[usize],
    n_classes: usize,
) -> Result<(PredictionQuality, Contingency)> {
    let c = Contingency::new(truth, pred, n_classes, n_classes)?;
    let (rows, cols) = (c.row_sums(), c.col_sums());
    let n = c.total();
    let correct: u64 = (0..n_classes).map(|k| c.get(k, k)).sum();
    let per_class: Vec<ClassScore> = (0..n_classes)
        .map(|k| ClassScore {
            class: k,
            precision: ratio(c.get(k, k), cols[k]),
            recall: ratio(c.get(k, k), rows[k]),
            support: rows[k],
            predicted: cols[k],
        })
        .collect();
    let present: Vec<&ClassScore> = per_class
        .iter()
        .filter(|s| s.support > 0 || s.predicted > 0)
        .collect();
    let mean = |f: &dyn Fn(&ClassScore) -> f64| {
        if present.is_empty() {
            0.0
        } else {
            present.iter().map(|s| f(s)).sum::<f64>() / present.len() as f64
        }
    };
    let q = PredictionQuality {
        n,
        accuracy: ratio(correct, n),
        macro_precision: mean(&|s| s.precision),
        macro_recall: mean(&|s| s.recall),
        per_class,
    };
    Ok((q, c))
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

/// The contingency table as a heat map (rows: true classes; columns in
/// `order`, e.g. [`matched_order`]), coloured by each row's share.
pub fn confusion_image(
    c: &Contingency,
    class_names: &[String],
    label_names: &[String],
    order: Option<&[usize]>,
    title: &str,
) -> RgbImage {
    let values = c.rows(order);
    let cols: Vec<String> = match order {
        Some(o) => o
            .iter()
            .map(|&p| label_names.get(p).cloned().unwrap_or_else(|| p.to_string()))
            .collect(),
        None => label_names.to_vec(),
    };
    plot::heat_map(
        &values,
        class_names,
        &cols,
        &plot::HeatMap {
            title,
            row_axis: "true class",
            col_axis: "label",
            normalize_rows: true,
            annotate: true,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn perfect_and_permuted_clusterings_score_one() {
        let truth = [0, 0, 1, 1, 2, 2];
        let pred = [2, 2, 0, 0, 1, 1];
        let (q, _) = cluster_quality(&truth, &pred, 3, 3).unwrap();
        assert!(close(q.accuracy, 1.0) && close(q.nmi, 1.0) && close(q.ari, 1.0));
        assert!(close(q.purity, 1.0));
        assert_eq!(q.matching, vec![Some(1), Some(2), Some(0)]);
    }

    #[test]
    fn matches_scikit_learn_on_a_small_case() {
        // Golden values from the scikit-learn of scripts/requirements.txt:
        //   from sklearn.metrics import normalized_mutual_info_score as nmi, adjusted_rand_score as ari
        //   t=[0,0,0,1,1,1,2,2,2,2]; p=[0,0,1,1,1,2,2,2,0,0]
        //   nmi(t,p) = 0.3946483716358942, ari(t,p) = 0.09090909090909091
        let t = [0, 0, 0, 1, 1, 1, 2, 2, 2, 2];
        let p = [0, 0, 1, 1, 1, 2, 2, 2, 0, 0];
        let (q, _) = cluster_quality(&t, &p, 3, 3).unwrap();
        assert!((q.nmi - 0.3946483716358942).abs() < 1e-12, "nmi {}", q.nmi);
        assert!((q.ari - 0.09090909090909091).abs() < 1e-12, "ari {}", q.ari);
        // Best matching: 0->0 (2), 1->1 (2), 2->2 (2): 6 of 10.
        assert!(close(q.accuracy, 0.6));
        // Purity: cluster 0 {0,0,2,2} -> 2, cluster 1 {0,1,1} -> 2, cluster 2 {1,2,2} -> 2.
        assert!(close(q.purity, 0.6));
    }

    #[test]
    fn hungarian_finds_the_optimum_where_greedy_fails() {
        // Greedy takes (0,0)=10 then (1,1)=1: 11. Optimal: (0,1)+(1,0) = 9+9 = 18.
        let w = vec![vec![10.0, 9.0], vec![9.0, 1.0]];
        assert_eq!(max_weight_matching(&w), vec![Some(1), Some(0)]);
        // Rectangular both ways.
        let w = vec![vec![1.0, 5.0, 2.0]];
        assert_eq!(max_weight_matching(&w), vec![Some(1)]);
        let w = vec![vec![1.0], vec![5.0], vec![2.0]];
        assert_eq!(max_weight_matching(&w), vec![None, Some(0), None]);
    }

    #[test]
    fn hungarian_matches_brute_force_on_random_matrices() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        for _ in 0..50 {
            let n = 5;
            let w: Vec<Vec<f64>> = (0..n)
                .map(|_| (0..n).map(|_| rng.random_range(0..20) as f64).collect())
                .collect();
            let got = max_weight_matching(&w);
            let score: f64 = got.iter().enumerate().map(|(i, j)| w[i][j.unwrap()]).sum();
            let mut best = 0.0f64;
            let mut perm: Vec<usize> = (0..n).collect();
            permutations(&mut perm, 0, &mut |p| {
                best = best.max(p.iter().enumerate().map(|(i, &j)| w[i][j]).sum());
            });
            assert!(close(score, best), "{score} vs {best}");
        }
    }

    fn permutations(v: &mut Vec<usize>, k: usize, f: &mut dyn FnMut(&[usize])) {
        if k == v.len() {
            f(v);
            return;
        }
        for i in k..v.len() {
            v.swap(k, i);
            permutations(v, k + 1, f);
            v.swap(k, i);
        }
    }

    #[test]
    fn prediction_quality_counts_precision_and_recall() {
        let t = [0, 0, 1, 1, 1];
        let p = [0, 1, 1, 1, 0];
        let (q, c) = prediction_quality(&t, &p, 2).unwrap();
        assert!(close(q.accuracy, 0.6));
        assert!(close(q.per_class[0].precision, 0.5) && close(q.per_class[0].recall, 0.5));
        assert!(close(q.per_class[1].precision, 2.0 / 3.0));
        assert!(close(q.per_class[1].recall, 2.0 / 3.0));
        assert_eq!(c.get(1, 0), 1);
        assert!(Contingency::new(&[0, 3], &[0, 0], 2, 2).is_err());
    }

    #[test]
    fn matched_order_puts_matches_on_the_diagonal() {
        let order = matched_order(&[Some(1), None, Some(0)], 2);
        assert_eq!(order, vec![2, 0, 1]);
    }
}
