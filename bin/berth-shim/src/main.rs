//! berth-shim: one process per container, the container's parent, holding
//! its stdio, log and exit status so that the container outlives berthd.
//!
//! Not built yet: berthd does not start containers so far, and this binary
//! says so instead of pretending to serve.

fn main() {
    eprintln!("berth-shim: not implemented yet (containers and pods are not built so far)");
    std::process::exit(2);
}
