use std::{collections::BTreeMap, sync::Mutex, time::Instant};
static M: Mutex<Option<(Instant, BTreeMap<String, u64>)>> = Mutex::new(None);
pub fn note(k: &str) { note_owned(k.to_string()) }
pub fn note_owned(k: String) {
    if std::env::var_os("DIAG").is_none() { return; }
    let mut g = M.lock().unwrap();
    let e = g.get_or_insert_with(|| (Instant::now(), BTreeMap::new()));
    *e.1.entry(k).or_default() += 1;
}
pub fn maybe_print() {
    if std::env::var_os("DIAG").is_none() { return; }
    let mut g = M.lock().unwrap();
    let e = g.get_or_insert_with(|| (Instant::now(), BTreeMap::new()));
    if e.0.elapsed().as_secs() >= 10 {
        e.0 = Instant::now();
        eprintln!("DIAG {:?}", e.1);
    }
}
