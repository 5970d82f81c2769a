// Starts `indexcache cluster up` for a test file and collects what it prints: every service's
// address by name ("router", "prefill-0", "http", …) and every /metrics address ("metrics router").
import { spawn } from 'node:child_process';

export function startCluster(indexcache, args) {
  const child = spawn(indexcache, ['cluster', 'up', ...args], { stdio: ['ignore', 'pipe', 'inherit'] });
  const addresses = {};
  const ready = new Promise((resolve, reject) => {
    let buffered = '';
    const timer = setTimeout(() => reject(new Error('the cluster was not ready within 120 s')), 120_000);
    child.on('exit', (code) => reject(new Error(`cluster up exited with ${code}`)));
    child.stdout.on('data', (data) => {
      buffered += data;
      let newline;
      while ((newline = buffered.indexOf('\n')) >= 0) {
        const words = buffered.slice(0, newline).trim().split(/\s+/);
        buffered = buffered.slice(newline + 1);
        if (words[0] === 'ready') {
          clearTimeout(timer);
          resolve();
        } else if (words[0] === 'metrics') {
          addresses[`metrics ${words[1]}`] = words[2];
        } else if (words.length === 2) {
          addresses[words[0]] = words[1];
        }
      }
    });
  });
  return { child, addresses, ready };
}
