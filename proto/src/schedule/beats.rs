//! Beat grids: the beats of a movie's soundtrack (`--beats`), found by a beat tracker before
//! submit, as the unit of beat keys (`8b`) and of `b` in formulas in place of a constant
//! `--bpm`. Beat 0 is the first beat at or after the movie's start, beat n the n-th after it;
//! between beats `b` moves linearly, and before the first or after the last beat it goes on at
//! the grid's mean period. The grid is part of the job (on the wire and in the fingerprint),
//! so every worker evaluates the same schedule whichever segment it renders.

use super::BPM_RANGE;
use crate::params::ParamError;

/// Beats a grid may hold: a two-hour movie at 240 beats per minute.
pub const MAX_BEATS: usize = 28_800;

/// The flag errors name.
const FLAG: &str = "--beats";

/// Beat times in seconds of the movie, strictly increasing.
#[derive(Debug, Clone, PartialEq)]
pub struct BeatGrid {
    times: Vec<f64>,
    /// The mean time between beats (a tracker's beats wobble about the tempo it follows): the
    /// grid's period outside its beats.
    period: f64,
}

impl BeatGrid {
    /// Checks `times` as a grid sent by a client: 2 to [`MAX_BEATS`] beats, finite, at or after
    /// the movie's start, in order, no two closer than the fastest tempo `--bpm` takes.
    pub fn new(times: Vec<f64>) -> Result<Self, ParamError> {
        if times.len() < 2 || times.len() > MAX_BEATS {
            return Err(ParamError::new(
                FLAG,
                format!("a beat grid holds 2 to {MAX_BEATS} beats, got {}", times.len()),
            ));
        }
        let closest = 60.0 / BPM_RANGE.1;
        for (i, &t) in times.iter().enumerate() {
            if !(t.is_finite() && t >= 0.0) {
                return Err(ParamError::new(FLAG, format!("beat {i} is at {t} s; beats are at 0 s or later")));
            }
            if i > 0 && t - times[i - 1] < closest {
                return Err(ParamError::new(
                    FLAG,
                    format!(
                        "beat {i} ({t} s) comes {} s after the beat before it; beats are at least {closest} s apart \
                         ({} beats per minute)",
                        t - times[i - 1],
                        BPM_RANGE.1
                    ),
                ));
            }
        }
        let period = (times[times.len() - 1] - times[0]) / (times.len() - 1) as f64;
        Ok(Self { times, period })
    }

    /// A grid from a beat tracker's beats over a movie of `seconds`: beats it skipped (an
    /// interval of about k periods) are put back k-1 at a time, evenly, and the grid goes on at
    /// its period and phase back to the movie's start and on to its end, so beat 0 is the first
    /// beat of the movie, not the first the tracker was sure of (trackers take a few seconds to
    /// lock on). Beats outside the movie are dropped.
    pub fn from_tracker(detected: &[f64], seconds: f64) -> Result<Self, ParamError> {
        let mut beats: Vec<f64> = detected.iter().copied().filter(|t| t.is_finite()).collect();
        beats.sort_by(f64::total_cmp);
        beats.dedup();
        if beats.len() < 2 {
            return Err(ParamError::new(
                FLAG,
                format!(
                    "the beat tracker found {} beat{} in the soundtrack's {} s the movie plays; a beat grid needs \
                     at least 2 (is it music with a beat?)",
                    beats.len(),
                    if beats.len() == 1 { "" } else { "s" },
                    super::short(seconds)
                ),
            ));
        }
        // Each beat's number, counting the skipped ones; then the period and phase that fit
        // them best (least squares), so beats put back before the first detection do not
        // drift by the jitter of one interval.
        // The beat's period: the intervals of about the shortest common one (a tracker skips
        // beats, seldom adds one), so a sparse run of beats does not pass for a slow tempo.
        let mut gaps: Vec<f64> = beats.windows(2).map(|p| p[1] - p[0]).collect();
        gaps.sort_by(f64::total_cmp);
        let short = gaps[gaps.len() / 4];
        let common: Vec<f64> = gaps.iter().copied().filter(|&g| g < 1.5 * short).collect();
        let rough = common[common.len() / 2];
        let mut number = vec![0.0f64];
        for pair in beats.windows(2) {
            let k = ((pair[1] - pair[0]) / rough).round().max(1.0);
            number.push(number.last().expect("one at least") + k);
        }
        let n = beats.len() as f64;
        let (mean_k, mean_t) = (number.iter().sum::<f64>() / n, beats.iter().sum::<f64>() / n);
        let cov: f64 = number.iter().zip(&beats).map(|(k, t)| (k - mean_k) * (t - mean_t)).sum();
        let var: f64 = number.iter().map(|k| (k - mean_k) * (k - mean_k)).sum();
        let period = cov / var;
        if !(period.is_finite() && period >= 60.0 / BPM_RANGE.1) {
            return Err(ParamError::new(FLAG, format!("the beats found are not a tempo (period {period} s)")));
        }
        let mut grid = Vec::with_capacity(beats.len());
        let before = (beats[0] / period).floor().min(MAX_BEATS as f64);
        for k in (1..=before as usize).rev() {
            grid.push(beats[0] - k as f64 * period);
        }
        for (pair, ks) in beats.windows(2).zip(number.windows(2)) {
            let (a, b, k) = (pair[0], pair[1], (ks[1] - ks[0]) as usize);
            grid.extend((0..k).map(|j| a + (b - a) * j as f64 / k as f64));
            if grid.len() > MAX_BEATS {
                break;
            }
        }
        let last = *beats.last().expect("two beats at least");
        grid.push(last);
        let mut next = last + period;
        while next < seconds && grid.len() <= MAX_BEATS {
            grid.push(next);
            next += period;
        }
        grid.retain(|&t| (0.0..=seconds).contains(&t));
        if grid.len() > MAX_BEATS {
            return Err(ParamError::new(
                FLAG,
                format!(
                    "the soundtrack's tempo ({:.1} beats per minute) gives more than {MAX_BEATS} beats over the movie",
                    60.0 / period
                ),
            ));
        }
        Self::new(grid)
    }

    pub fn times(&self) -> &[f64] {
        &self.times
    }

    /// Beats per minute at the grid's mean period.
    pub fn bpm(&self) -> f64 {
        60.0 / self.period
    }

    /// Beats since beat 0 at second `s` of the movie.
    pub fn beat_at(&self, s: f64) -> f64 {
        let (t, n) = (&self.times, self.times.len());
        if s < t[0] {
            return (s - t[0]) / self.period;
        }
        if s >= t[n - 1] {
            return (n - 1) as f64 + (s - t[n - 1]) / self.period;
        }
        let i = t.partition_point(|&x| x <= s) - 1;
        i as f64 + (s - t[i]) / (t[i + 1] - t[i])
    }

    /// The second of the movie at beat `b` (the inverse of [`BeatGrid::beat_at`]).
    pub fn seconds_at(&self, b: f64) -> f64 {
        let (t, n) = (&self.times, self.times.len());
        if b < 0.0 {
            return t[0] + b * self.period;
        }
        let last = (n - 1) as f64;
        if b >= last {
            return t[n - 1] + (b - last) * self.period;
        }
        let i = b.floor() as usize;
        t[i] + (b - i as f64) * (t[i + 1] - t[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tracker_late_to_lock_on_and_skipping_beats_still_gives_every_beat_of_the_movie() {
        // 120 bpm from 0.25 s; the tracker found beats from 2.75 s, missed 4.25 s and 5.75 s.
        let found = [2.758, 3.255, 3.752, 4.747, 5.250, 6.245, 6.751];
        let grid = BeatGrid::from_tracker(&found, 8.0).unwrap();
        let t = grid.times();
        assert!((grid.bpm() - 120.0).abs() < 2.0, "{}", grid.bpm());
        // 0.25, 0.75, ... 7.75: 16 beats, each within 20 ms of the true one.
        assert_eq!(t.len(), 16, "{t:?}");
        for (i, &x) in t.iter().enumerate() {
            let truth = 0.25 + 0.5 * i as f64;
            assert!((x - truth).abs() < 0.02, "beat {i} at {x}, truly {truth}");
        }
        // Three beats, far apart: still every half second from 0.15 s, not a slow tempo.
        let sparse = BeatGrid::from_tracker(&[3.150, 5.652, 6.147], 8.0).unwrap();
        assert_eq!(sparse.times().len(), 16, "{:?}", sparse.times());
        assert!((sparse.times()[0] - 0.15).abs() < 0.02 && (sparse.bpm() - 120.0).abs() < 2.0);
    }

    #[test]
    fn beats_and_seconds_are_inverse_and_go_on_past_the_grid() {
        let grid = BeatGrid::new(vec![0.5, 1.0, 1.6, 2.0]).unwrap();
        for s in [0.0, 0.5, 0.75, 1.3, 2.0, 3.7] {
            assert!((grid.seconds_at(grid.beat_at(s)) - s).abs() < 1e-12, "{s}");
        }
        assert_eq!(grid.beat_at(1.6), 2.0);
        assert_eq!(grid.beat_at(1.3), 1.5);
        // The mean period (0.5 s) outside the beats.
        assert_eq!(grid.beat_at(0.0), -1.0);
        assert_eq!(grid.seconds_at(5.0), 3.0);
    }

    #[test]
    fn beat_keys_and_b_follow_the_grid() {
        use crate::schedule::{Schedule, Timing, ZOOM};
        let grid = BeatGrid::new(vec![0.3, 0.8, 1.4, 1.9]).unwrap();
        let timing = Timing { fps: 10.0, bpm: None, beats: Some(std::sync::Arc::new(grid)) };
        // Beat 2 is at 1.4 s, frame 14: the zoom steps there, not at 1 s as 120 bpm would.
        let keys = Schedule::parse(&ZOOM, "0:(1) step, 2b:(3)").unwrap();
        assert_eq!(keys.at(&ZOOM, &timing, 13).unwrap()[0], 1.0);
        assert_eq!(keys.at(&ZOOM, &timing, 14).unwrap()[0], 3.0);
        // b at 1.1 s is half-way from beat 1 (0.8 s) to beat 2 (1.4 s).
        let formula = Schedule::parse(&ZOOM, "1+b").unwrap();
        assert!((formula.at(&ZOOM, &timing, 11).unwrap()[0] - 2.5).abs() < 1e-12);
        keys.check(&ZOOM, &timing, 20).unwrap();
    }

    #[test]
    fn a_grid_from_the_wire_is_checked() {
        for (times, says) in [
            (vec![1.0], "holds 2 to"),
            (vec![0.0; MAX_BEATS + 1], "holds 2 to"),
            (vec![-1.0, 1.0], "beat 0 is at -1 s"),
            (vec![0.0, f64::NAN], "beat 1 is at NaN s"),
            (vec![0.0, 1.0, 1.01], "beat 2 (1.01 s) comes"),
            (vec![0.0, 1.0, 0.5], "beat 2 (0.5 s) comes"),
        ] {
            let e = BeatGrid::new(times).unwrap_err().to_string();
            assert!(e.starts_with("--beats: ") && e.contains(says), "{e}");
        }
        let e = BeatGrid::from_tracker(&[3.0], 10.0).unwrap_err().to_string();
        assert!(e.contains("found 1 beat in the soundtrack's 10 s"), "{e}");
    }
}
