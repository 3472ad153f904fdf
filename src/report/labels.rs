//! How `report`'s charts name what they show: a strategy run in a legend and on an axis, and the
//! subtitle that says what every chart of a run is of.

use crate::output::reduce::StrategySummary;
use plotters::prelude::*;

pub(super) type Area<'a> = DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>;

/// A strategy run as a legend names it: strategy, run id, and emulation.
pub(super) fn label(s: &StrategySummary) -> String {
    match s.config.emulate {
        Some(e) => format!("{} ({}, EMULATED rank {}/{})", s.config.strategy.name(), s.first.run_id, e.as_rank, e.world),
        None => format!("{} ({})", s.config.strategy.name(), s.first.run_id),
    }
}

/// A strategy run as an axis names it: the strategy, numbered where it repeats.
pub(super) fn short_labels(s: &[&StrategySummary]) -> Vec<String> {
    s.iter()
        .enumerate()
        .map(|(i, x)| {
            let name = x.config.strategy.name();
            let same = s.iter().filter(|y| y.config.strategy.name() == name).count();
            if same > 1 {
                format!("{name} #{}", s[..=i].iter().filter(|y| y.config.strategy.name() == name).count())
            } else {
                name.to_string()
            }
        })
        .collect()
}

/// What the charts of these runs are of: model, length, batch, backend, device, and how the
/// times were taken. Runs of several configs say so and list what differs.
pub fn subtitle(s: &[&StrategySummary]) -> String {
    let uniq = |f: &dyn Fn(&StrategySummary) -> String| -> Vec<String> {
        let mut v: Vec<String> = s.iter().map(|x| f(x)).collect();
        v.sort();
        v.dedup();
        v
    };
    let models = uniq(&|x| x.config.describe_model());
    let sizes =
        uniq(&|x| format!("{} tokens x batch {}, micro-batch {}", x.config.model.seq_len, x.config.model.batch, x.config.micro_batch));
    let devices = uniq(&|x| format!("backend {} on {}", x.config.backend.name(), x.first.device));
    let kinds = uniq(&|x| {
        let kind = crate::backend::timing_kind(&x.first.device);
        if x.config.emulate.is_some() {
            format!("{kind} (emulated ranks)")
        } else {
            kind.to_string()
        }
    });
    format!("{}; {}; {}; {}", models.join(" | "), sizes.join(" | "), devices.join(" | "), kinds.join(" | "))
}
