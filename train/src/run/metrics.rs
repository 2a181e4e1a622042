//! Training metrics: one JSON object per logged step in `RUN/metrics.jsonl`, and a PNG of the loss
//! curves (`RUN/loss.png`) redrawn from that file.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Record {
    pub stage: u8,
    pub step: usize,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub loss: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub val_loss: Option<f64>,
    /// Validation next-item Recall@10 and NDCG@10 through constrained beam search.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub val_recall10: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub val_ndcg10: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub lr: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub grad_norm: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub tokens_per_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub elapsed_s: Option<f64>,
    /// GRPO: the mean reward of the step's completions, the mean within-group std, the share of
    /// groups whose completions all earned the same (they teach nothing; a collapse drives it to 1),
    /// the policy's mean entropy at sampling (nats), the k3 KL to the reference, the clipped share.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub reward_mean: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub reward_std: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub zero_std_share: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub entropy: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub kl: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub clip_frac: Option<f64>,
    /// GRPO: the reward's parts, each averaged over the step's completions of its task (`cid`,
    /// `cid2cid`, `cid2ins`, and the instruction reward's `quality`, `sim_ins_target`, `sim_ins_pred`,
    /// `sim_pred_target`, `gate`, `pen`, `fmt`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub reward_parts: Option<std::collections::BTreeMap<String, f64>>,
    /// What the watch did at this step (a stop, a rollback), in words.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub event: Option<String>,
}

pub const FILE: &str = "metrics.jsonl";
pub const PLOT: &str = "loss.png";

/// Appends one record (flushed and synced: a kill loses at most the line being written).
pub fn append(run: &Path, r: &Record) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(run.join(FILE))?;
    let mut line = serde_json::to_vec(r)?;
    line.push(b'\n');
    f.write_all(&line)?;
    f.sync_data()?;
    Ok(())
}

/// Reads every complete record (a torn last line from a kill is ignored).
pub fn read(run: &Path) -> Result<Vec<Record>> {
    let text = match std::fs::read_to_string(run.join(FILE)) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect())
}

/// Drops records of `stage` after `step` (a resumed run rewrites them).
pub fn truncate_after(run: &Path, stage: u8, step: usize) -> Result<()> {
    keep_only(run, |r| r.stage != stage || r.step <= step)
}

/// Drops every record of `stage` (a stage started afresh that logs a step 0).
pub fn drop_stage(run: &Path, stage: u8) -> Result<()> {
    keep_only(run, |r| r.stage != stage)
}

fn keep_only(run: &Path, keep: impl Fn(&Record) -> bool) -> Result<()> {
    let keep: Vec<Record> = read(run)?.into_iter().filter(keep).collect();
    let mut out = Vec::new();
    for r in &keep {
        out.extend(serde_json::to_vec(r)?);
        out.push(b'\n');
    }
    navigen::format::write_atomic(&run.join(FILE), &out)?;
    Ok(())
}

fn font() -> bool {
    use std::sync::OnceLock;
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        const CANDIDATES: [&str; 5] = [
            "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
            "/usr/share/fonts/dejavu/DejaVuSans.ttf",
            "/usr/share/fonts/TTF/DejaVuSans.ttf",
            "/Library/Fonts/Arial.ttf",
            "C:\\Windows\\Fonts\\arial.ttf",
        ];
        for p in CANDIDATES {
            if let Ok(bytes) = std::fs::read(p) {
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font(
                    "sans-serif",
                    plotters::style::FontStyle::Normal,
                    bytes,
                )
                .is_ok()
                {
                    return true;
                }
            }
        }
        false
    })
}

/// Draws training and validation loss of every stage against the step. Without a system font the
/// curves are drawn without labels.
pub fn plot(run: &Path) -> Result<()> {
    use plotters::prelude::*;
    let records = read(run)?;
    if records.is_empty() {
        return Ok(());
    }
    let path = run.join(PLOT);
    let tmp = run.join(".loss.png.part.png");
    {
        let root = BitMapBackend::new(&tmp, (900, 540)).into_drawing_area();
        root.fill(&WHITE)?;
        let stages: Vec<u8> = {
            let mut s: Vec<u8> = records.iter().map(|r| r.stage).collect();
            s.sort_unstable();
            s.dedup();
            s
        };
        // Each stage continues the step axis where the previous one ended.
        let mut offset = std::collections::BTreeMap::new();
        let mut acc = 0usize;
        for s in &stages {
            offset.insert(*s, acc);
            acc += records
                .iter()
                .filter(|r| r.stage == *s)
                .map(|r| r.step)
                .max()
                .unwrap_or(0)
                + 1;
        }
        let xs = |r: &Record| (offset[&r.stage] + r.step) as f64;
        let vals: Vec<f64> = records
            .iter()
            .flat_map(|r| [r.loss, r.val_loss])
            .flatten()
            .filter(|v| v.is_finite())
            .collect();
        let (lo, hi) = vals
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| {
                (a.min(v), b.max(v))
            });
        let (lo, hi) = if lo < hi {
            (lo * 0.95, hi * 1.05)
        } else {
            (lo - 1.0, hi + 1.0)
        };
        let labels = font();
        let mut builder = ChartBuilder::on(&root);
        builder
            .margin(20)
            .x_label_area_size(if labels { 40 } else { 5 })
            .y_label_area_size(if labels { 60 } else { 5 });
        if labels {
            builder.caption("navigen SFT loss", ("sans-serif", 22));
        }
        let mut chart = builder.build_cartesian_2d(0f64..acc.max(1) as f64, lo..hi)?;
        let mut mesh = chart.configure_mesh();
        if labels {
            mesh.x_desc("step (stages in sequence)").y_desc("loss");
        } else {
            mesh.disable_x_axis().disable_y_axis();
        }
        mesh.draw()?;
        let colours = [BLUE, RED, GREEN, MAGENTA];
        for (i, s) in stages.iter().enumerate() {
            let c = colours[i % colours.len()];
            let train: Vec<(f64, f64)> = records
                .iter()
                .filter(|r| r.stage == *s)
                .filter_map(|r| r.loss.map(|l| (xs(r), l)))
                .collect();
            let val: Vec<(f64, f64)> = records
                .iter()
                .filter(|r| r.stage == *s)
                .filter_map(|r| r.val_loss.map(|l| (xs(r), l)))
                .collect();
            let series = chart.draw_series(LineSeries::new(train, c.stroke_width(1)))?;
            if labels {
                series
                    .label(format!("stage {s} train"))
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c));
            }
            let vs = chart.draw_series(LineSeries::new(val.clone(), c.mix(0.6).stroke_width(3)))?;
            if labels {
                vs.label(format!("stage {s} validation"))
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 20, y)], c.mix(0.6).stroke_width(3))
                    });
            }
            chart.draw_series(val.into_iter().map(|p| Circle::new(p, 4, c.filled())))?;
        }
        if labels {
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()?;
        }
        root.present().context("writing the loss plot")?;
    }
    std::fs::rename(&tmp, &path)?;
    Ok(())
}

pub const GRPO_PLOT: &str = "grpo.png";

/// The GRPO watch as a picture (`RUN/grpo.png`): per step the mean reward, the mean within-group std,
/// the share of groups with zero std, and validation Recall@10 where it was measured; all in [0, 1].
pub fn plot_grpo(run: &Path, stage: u8) -> Result<()> {
    use plotters::prelude::*;
    let records: Vec<Record> = read(run)?
        .into_iter()
        .filter(|r| r.stage == stage)
        .collect();
    if records.is_empty() {
        return Ok(());
    }
    let last = records.iter().map(|r| r.step).max().unwrap_or(0).max(1) as f64;
    let tmp = run.join(".grpo.png.part.png");
    {
        let root = BitMapBackend::new(&tmp, (900, 540)).into_drawing_area();
        root.fill(&WHITE)?;
        let labels = font();
        let mut builder = ChartBuilder::on(&root);
        builder
            .margin(20)
            .x_label_area_size(if labels { 40 } else { 5 })
            .y_label_area_size(if labels { 50 } else { 5 });
        if labels {
            builder.caption("navigen GRPO watch", ("sans-serif", 22));
        }
        let mut chart = builder.build_cartesian_2d(0f64..last, 0f64..1.05)?;
        let mut mesh = chart.configure_mesh();
        if labels {
            mesh.x_desc("GRPO step").y_desc("value");
        } else {
            mesh.disable_x_axis().disable_y_axis();
        }
        mesh.draw()?;
        type Pick = fn(&Record) -> Option<f64>;
        fn part(r: &Record, k: &str) -> Option<f64> {
            r.reward_parts.as_ref().and_then(|p| p.get(k).copied())
        }
        let series: [(&str, Pick, RGBColor); 6] = [
            ("reward mean", |r| r.reward_mean, BLUE),
            ("next-item reward", |r| part(r, "cid2cid"), CYAN),
            ("instruction reward", |r| part(r, "cid2ins"), BLACK),
            ("reward std in groups", |r| r.reward_std, RED),
            ("groups with zero std", |r| r.zero_std_share, MAGENTA),
            ("val Recall@10", |r| r.val_recall10, GREEN),
        ];
        for (name, pick, c) in series {
            let pts: Vec<(f64, f64)> = records
                .iter()
                .filter_map(|r| pick(r).map(|v| (r.step as f64, v)))
                .collect();
            let s = chart.draw_series(LineSeries::new(pts, c.stroke_width(2)))?;
            if labels {
                s.label(name)
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c));
            }
        }
        if labels {
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()?;
        }
        root.present().context("writing the GRPO plot")?;
    }
    std::fs::rename(&tmp, run.join(GRPO_PLOT))?;
    Ok(())
}
