// A V8 garbage-collector sawtooth (no leak): objects are kept in a batch that is dropped every
// PERIOD_S seconds, so the old generation fills and a major GC empties it again.
//   node gc_sawtooth.js NAME SECONDS PERIOD_S MB_PER_PERIOD
// Prints "grow <unix-seconds>" when it starts, "hold" after SECONDS, then idles until killed.
"use strict";
const [name, seconds, periodS, mbPerPeriod] = process.argv.slice(2);
process.title = name;
const ticksPerPeriod = Number(periodS) * 10;
const perTick = Math.ceil((Number(mbPerPeriod) * 1024 * 1024) / ticksPerPeriod / 1100);
let batch = [];
let tick = 0;
const end = Date.now() + Number(seconds) * 1000;
console.log(`grow ${(Date.now() / 1000).toFixed(3)}`);
const timer = setInterval(() => {
  if (Date.now() >= end) {
    clearInterval(timer);
    batch = [];
    console.log("hold");
    setInterval(() => {}, 1 << 30);
    return;
  }
  for (let i = 0; i < perTick; i++) {
    batch.push({ n: i, data: new Array(128).fill(tick), s: "x".repeat(64) + i });
  }
  tick += 1;
  if (tick % ticksPerPeriod === 0) batch = [];
}, 100);
