//! Prints central's `/catalogue.json`: the dashboard test's synthetic central serves it, so the
//! dashboard is checked against the catalogue the real central serves.

fn main() {
    println!("{}", xdt_central::catalogue::json());
}
