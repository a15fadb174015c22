//! Burns CPU forever and reports how much work it got done each second, so a
//! `resources.limits.cpu` throttle shows up as a lower rate in the logs.

use std::time::Instant;

fn main() {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut window = Instant::now();
    let mut work: u64 = 0;
    loop {
        for _ in 0..10_000 {
            // xorshift: cheap, not optimisable away because the result is printed.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
        }
        work += 1;
        if window.elapsed().as_secs_f64() >= 1.0 {
            println!("rate {work} checksum {}", x & 0xff);
            work = 0;
            window = Instant::now();
        }
    }
}
