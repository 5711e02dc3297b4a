// `sqlx::migrate!` embeds the files it finds when this crate compiles, and cargo only
// watches those files: without this, a new migration would not be in the binaries.
fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}
