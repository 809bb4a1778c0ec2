//! `kestrel metrics`: metrics from maps and masks on disk, made by any tool.

use crate::cli::MetricsArgs;

/// `kestrel metrics`.
pub fn run(a: &MetricsArgs) -> anyhow::Result<()> {
    let r = kestrel_vision::metrics::evaluate_dirs(&a.maps, &a.masks, a.scores.as_deref())?;
    if a.json {
        crate::outln!("{}", serde_json::to_string(&r)?)?;
    } else {
        use super::fmt_opt;
        crate::outln!("images       {}", r.images)?;
        crate::outln!("pixels       {}", r.pixels)?;
        crate::outln!("image AUROC  {}", fmt_opt(r.image_auroc))?;
        crate::outln!("pixel AUROC  {}", fmt_opt(r.pixel_auroc))?;
        crate::outln!("AUPRO@0.3    {}", fmt_opt(r.aupro))?;
        crate::outln!("F1-max       {}", fmt_opt(r.f1_max))?;
        crate::outln!("threshold    {:.6}", r.threshold)?;
    }
    Ok(())
}
