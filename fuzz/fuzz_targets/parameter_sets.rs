#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| camvault_server::fuzz::run("parameter_sets", data));
