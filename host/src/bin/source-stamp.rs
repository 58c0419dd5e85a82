//! Prints the stamp of the current kernel sources; `scripts/build-ptx.sh` stores it beside
//! the PTX it builds.
fn main() {
    println!("{}", host::backend::ptx::CURRENT_SOURCE_STAMP);
}
