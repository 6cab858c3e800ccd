/** Checksums that name a distributed run: of the slide file, of the model, and of the settings that shape outputs. */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import { join } from 'node:path';
import { ModelFormatError, readManifest, type ModelManifest } from '@tessera/core';

const slideSums = new Map<string, Promise<string>>();

/** SHA-256 of a file (hex), computed once per process for a given path, size and modification time. */
export async function fileSha256(path: string): Promise<string> {
  const info = await stat(path);
  const key = `${path}\0${info.size}\0${info.mtimeMs}`;
  let sum = slideSums.get(key);
  if (!sum) {
    sum = new Promise<string>((resolve, reject) => {
      const hash = createHash('sha256');
      createReadStream(path)
        .on('data', (chunk) => hash.update(chunk))
        .on('error', reject)
        .on('end', () => resolve(hash.digest('hex')));
    });
    slideSums.set(key, sum);
    sum.catch(() => slideSums.delete(key));
  }
  return sum;
}

/**
 * The checksum of a model folder as a distributed run knows it: SHA-256 of its weights and topology checksums (the
 * weights checked against the file) and of what else in its manifest shapes predictions (classes, input channels,
 * normalisation, µm/px, architecture and options).
 */
export async function modelChecksum(dir: string): Promise<{ checksum: string; manifest: ModelManifest }> {
  const manifest = await readManifest(dir);
  const weights = join(dir, 'weights.bin');
  const actual = await fileSha256(weights);
  if (actual !== manifest.files.weights.sha256) {
    throw new ModelFormatError(
      `Model folder "${dir}": weights.bin has SHA-256 ${actual.slice(0, 12)}… but manifest.json records ` +
        `${manifest.files.weights.sha256.slice(0, 12)}….`,
      'Copy the model folder again as a whole (weights.bin and manifest.json belong together).',
    );
  }
  const hash = createHash('sha256');
  hash.update(manifest.files.weights.sha256).update('\0').update(manifest.files.topology.sha256).update('\0');
  // Everything of the manifest that changes what is predicted: classes, input, normalisation, µm/px, architecture.
  const { classes, inputChannels, normalization, mpp, architecture } = manifest;
  hash.update(JSON.stringify({ classes, inputChannels, normalization, mpp, architecture }));
  return { checksum: hash.digest('hex'), manifest };
}

/** A short stable key of a JSON-able value (hex, 32 characters). */
export function keyOf(value: unknown): string {
  return createHash('sha256').update(JSON.stringify(value)).digest('hex').slice(0, 32);
}
