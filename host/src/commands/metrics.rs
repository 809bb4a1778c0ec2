//! `kestrel metrics`: metrics from maps and masks on disk, made by any tool.

use crate::cli::MetricsArgs;

/// `kestrel metrics`.
pub fn run(a: &MetricsArgs) -> anyhow::Result<()> {
    let r = kestrel_vision::metrics::evaluate_dirs(&a.maps, &a.masks, a.scores.as_deref())?;
    if a.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        use super::fmt_opt;
        println!("images       {}", r.images);
        println!("pixels       {}", r.pixels);
        println!("image AUROC  {}", fmt_opt(r.image_auroc));
        println!("pixel AUROC  {}", fmt_opt(r.pixel_auroc));
        println!("AUPRO@0.3    {}", fmt_opt(r.aupro));
        println!("F1-max       {}", fmt_opt(r.f1_max));
        println!("threshold    {:.6}", r.threshold);
    }
    Ok(())
}
