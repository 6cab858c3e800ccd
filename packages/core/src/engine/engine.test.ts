import { describe, expect, it } from 'vitest';
import { EngineError, UnknownNameError } from '../errors.js';
import { probeEngines, setupEngine } from './engine.js';

describe('setupEngine', () => {
  it('picks the engine asked for and says why', async () => {
    const engine = await setupEngine('cpu');
    expect(engine).toMatchObject({ name: 'cpu', backend: 'cpu', reason: 'asked for with --backend' });
  });

  it('reads TESSERA_BACKEND', async () => {
    process.env.TESSERA_BACKEND = 'wasm';
    try {
      expect(await setupEngine()).toMatchObject({
        name: 'wasm',
        backend: 'wasm',
        reason: 'asked for with TESSERA_BACKEND',
      });
    } finally {
      delete process.env.TESSERA_BACKEND;
    }
  });

  it('rejects an unknown engine with the valid names', async () => {
    await expect(setupEngine('wsam')).rejects.toThrow(UnknownNameError);
    await expect(setupEngine('wsam')).rejects.toThrow(
      'Unknown engine "wsam". Did you mean "wasm"? Valid choices: auto, tfjs-node-gpu, tfjs-node, wasm, cpu.',
    );
  });

  it('fails clearly when a missing native engine is asked for', async () => {
    const probes = await probeEngines();
    const native = probes.find((p) => p.name === 'tfjs-node');
    if (native?.available) return; // a machine with libtensorflow
    await expect(setupEngine('tfjs-node')).rejects.toThrow(EngineError);
    await expect(setupEngine('tfjs-node')).rejects.toThrow(
      'Engine "tfjs-node" was asked for (--backend) but is not installed.',
    );
  });

  it('auto picks the fastest present engine', async () => {
    const probes = await probeEngines();
    const first = probes.find((p) => p.available)!;
    expect((await setupEngine('auto')).name).toBe(first.name);
  });
});
