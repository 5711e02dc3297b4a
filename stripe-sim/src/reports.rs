//! Report runs' jobs: a run is answered `pending` and its CSV written here, off the
//! request, as Stripe runs reports in the background. Clients must poll the run until it
//! `succeeded`, as they must with Stripe, so the sim never finishes a run within its
//! create request: the job starts `MIN_RUN_TIME` (wall time) later.
//!
//! A million rows take a second or two to write; the job writes them on a blocking
//! thread, `CHUNK` rows per hold of the state lock, so requests keep being served.

use std::time::Duration;

use crate::Sim;
use crate::state::ReportJob;

pub const MIN_RUN_TIME: Duration = Duration::from_millis(100);

const CHUNK: usize = 20_000;

/// Starts the job of a run just created; `base` is the sim's URL as the client reached
/// it, for the file's `url`.
pub fn spawn(sim: Sim, run: String, base: String) {
    tokio::spawn(async move {
        tokio::time::sleep(MIN_RUN_TIME).await;
        let Some(job) = sim.state().report_job(&run) else {
            return;
        };
        let writer = sim.clone();
        let written = tokio::task::spawn_blocking(move || {
            let csv = write(&writer, &job);
            (job, csv)
        })
        .await;
        let now = sim.inner.clock.now_s();
        match written {
            Ok((job, Some(csv))) => {
                sim.state()
                    .finish_report_run(&job, csv.into_bytes().into(), &base, now)
            }
            // The simulator was reset while the job ran: its run is gone.
            Ok((_, None)) => {}
            Err(e) => {
                tracing::error!(run, error = %e, "report job failed");
                let job = sim.state().report_job(&run);
                if let Some(job) = job {
                    sim.state()
                        .fail_report_run(&job, "The report could not be generated.");
                }
            }
        }
    });
}

/// The whole CSV, or `None` if the simulator was reset meanwhile.
pub fn write(sim: &Sim, job: &ReportJob) -> Option<String> {
    let mut out = String::with_capacity(job.header.len() + job.rows.len() * job.row_size());
    out.push_str(&job.header);
    let mut at = job.rows.start;
    while at < job.rows.end {
        let to = (at + CHUNK).min(job.rows.end);
        if !sim.state().render_report(job, at..to, &mut out) {
            return None;
        }
        at = to;
    }
    Some(out)
}
