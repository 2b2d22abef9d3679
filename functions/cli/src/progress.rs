//! Progress of `pgp tap`: live bars (rows and bytes per table) on a terminal, plain log
//! lines otherwise (CI, cron, Cloud Logging).

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use pgp::extract::Extracted;
use pgp::plan::TablePlan;
use pgp::run::{Progress, TableReport};
use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::Mutex;

/// Bars on a terminal, log lines elsewhere.
pub fn for_terminal() -> Box<dyn Progress> {
    if std::io::stderr().is_terminal() {
        Box::new(Bars {
            multi: MultiProgress::new(),
            bars: Mutex::new(HashMap::new()),
        })
    } else {
        Box::new(Lines)
    }
}

struct Lines;

impl Progress for Lines {
    fn table_started(&self, plan: &TablePlan) {
        if plan.loads() {
            tracing::info!(table = %plan.table, target = %plan.target, chunks = plan.chunks.len(), "loading");
        }
    }
    fn chunk_done(&self, table: &str, chunk: usize, of: usize, x: &Extracted) {
        tracing::info!(
            table,
            chunk,
            of,
            rows = x.rows,
            bytes = x.bytes,
            object_bytes = x.object_bytes,
            "chunk loaded"
        );
    }
    fn table_finished(&self, r: &TableReport) {
        tracing::info!(table = %r.table, outcome = ?r.outcome, rows = r.rows, seconds = r.seconds, "table done");
    }
}

struct Bars {
    multi: MultiProgress,
    bars: Mutex<HashMap<String, ProgressBar>>,
}

impl Progress for Bars {
    fn table_started(&self, plan: &TablePlan) {
        if !plan.loads() {
            return;
        }
        let bar = self.multi.add(ProgressBar::new_spinner());
        bar.set_style(
            ProgressStyle::with_template("{spinner} {prefix:<32} {msg} [{elapsed}]")
                .expect("template"),
        );
        bar.set_prefix(plan.table.clone());
        bar.enable_steady_tick(std::time::Duration::from_millis(200));
        self.bars
            .lock()
            .expect("bars")
            .insert(plan.table.clone(), bar);
    }
    fn chunk_progress(&self, table: &str, chunk: usize, rows: u64, bytes: u64) {
        if let Some(b) = self.bars.lock().expect("bars").get(table) {
            b.set_message(format!(
                "chunk {chunk}: {rows} rows, {:.1} MB",
                bytes as f64 / 1e6
            ));
        }
    }
    fn table_finished(&self, r: &TableReport) {
        if let Some(b) = self.bars.lock().expect("bars").remove(&r.table) {
            b.finish_with_message(format!(
                "{} rows, {:.1} MB, {:?}",
                r.rows,
                r.bytes as f64 / 1e6,
                r.outcome
            ));
        }
    }
}
