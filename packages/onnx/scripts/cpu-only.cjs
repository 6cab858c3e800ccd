/**
 * preinstall of @tessera/onnx: keeps `npm install` from downloading onnxruntime's CUDA provider.
 *
 * onnxruntime-node's own postinstall downloads its CUDA execution provider from api.nuget.org on Linux x64 unless
 * those files are already present or `onnxruntime-node-install` / `ONNXRUNTIME_NODE_INSTALL` says otherwise; without
 * internet that fails the whole install ("getaddrinfo ENOTFOUND api.nuget.org"). Prediction on the CPU needs none of
 * it (the CPU runtime is in the npm package). npm runs every package's preinstall before any postinstall, so this
 * script writes small marker files under the names the installer checks, and its postinstall finds nothing missing.
 *
 * Nothing is written when the user asked for an installation (`ONNXRUNTIME_NODE_INSTALL=cuda12`, the npm config, or
 * their deprecated `_CUDA` forms): then onnxruntime-node does what was asked. The GPU is opt-in:
 *   ONNXRUNTIME_NODE_INSTALL=1 npm rebuild onnxruntime-node
 * replaces the markers with the real libraries (in onnxruntime-node 1.30, the value `cuda12` only downloads where the
 * files are missing). `@tessera/onnx` tells markers from libraries by their first bytes.
 */
'use strict';
const { existsSync, mkdirSync, writeFileSync } = require('node:fs');
const { dirname, join } = require('node:path');

const FILES = [
  'libonnxruntime_providers_cuda.so',
  'libonnxruntime_providers_shared.so',
  'libonnxruntime_providers_tensorrt.so',
];
const MARKER =
  'Not a library: written by @tessera/onnx so that installing onnxruntime-node does not download its CUDA ' +
  'provider. Run `ONNXRUNTIME_NODE_INSTALL=1 npm rebuild onnxruntime-node` to install it.\n';

function asked() {
  const env = process.env;
  return [
    env.ONNXRUNTIME_NODE_INSTALL,
    env.npm_config_onnxruntime_node_install,
    env.ONNXRUNTIME_NODE_INSTALL_CUDA,
    env.npm_config_onnxruntime_node_install_cuda,
  ].some((v) => v !== undefined && v !== '');
}

function main() {
  // Only Linux x64 has files to download (onnxruntime-node's install-metadata.js).
  if (process.platform !== 'linux' || process.arch !== 'x64' || asked()) return;
  let root;
  try {
    root = dirname(require.resolve('onnxruntime-node/package.json', { paths: [join(__dirname, '..')] }));
  } catch {
    return; // not unpacked here (another layout): nothing to do
  }
  const dir = join(root, 'bin', 'napi-v6', 'linux', 'x64');
  mkdirSync(dir, { recursive: true });
  for (const file of FILES) {
    const path = join(dir, file);
    if (!existsSync(path)) writeFileSync(path, MARKER);
  }
}

try {
  main();
} catch (error) {
  // Never fail the install here: at worst onnxruntime-node's installer runs as it would without this script.
  process.stderr.write(`@tessera/onnx: could not prepare a CPU-only onnxruntime-node install: ${error.message}\n`);
}
