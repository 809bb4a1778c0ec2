//! One module per subcommand. Each has a `run(&Args)` that validates, does the work and prints; the reusable parts
//! (`fit::fit_category`, `eval::evaluate`) are used by `demo` too.

pub mod demo;
pub mod eval;
pub mod fit;
pub mod import;
pub mod metrics;
pub mod monitor;
pub mod predict;
pub mod pretrain;
pub mod synth;

use kestrel_vision::dataset::LayoutChoice;

use crate::cli::LayoutArg;

impl From<LayoutArg> for LayoutChoice {
    fn from(l: LayoutArg) -> Self {
        match l {
            LayoutArg::Auto => LayoutChoice::Auto,
            LayoutArg::Mvtec => LayoutChoice::Mvtec,
            LayoutArg::Visa => LayoutChoice::Visa,
            LayoutArg::Folder => LayoutChoice::Folder,
        }
    }
}

/// Format an optional metric for tables.
pub(crate) fn fmt_opt(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.4}")).unwrap_or_else(|| "n/a".into())
}
