#!/usr/bin/env node
// forge expects a native solc; this answers the two calls it makes (`--version`, `--standard-json`)
// with solc-js from .tools/node_modules (installed by scripts/setup-chain), so contracts build offline.
const path = require('path');
const solc = require(path.join(__dirname, '..', '.tools', 'node_modules', 'solc'));
const args = process.argv.slice(2);
if (args.includes('--version')) {
  console.log('solc, the solidity compiler commandline interface');
  console.log('Version: ' + solc.version().replace('.Emscripten.clang', '.Linux.g++'));
} else if (args.includes('--standard-json')) {
  let input = '';
  process.stdin.setEncoding('utf8');
  process.stdin.on('data', (d) => { input += d; });
  process.stdin.on('end', () => { process.stdout.write(solc.compile(input)); });
} else {
  console.error('solc-shim: only --version and --standard-json are supported');
  process.exit(1);
}
