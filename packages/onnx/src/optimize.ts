/**
 * Rewrites of the exported graph that keep its results and let onnxruntime run it faster on CPUs:
 *
 * 1. A BatchNormalization whose input is a Conv used by nothing else is folded into the Conv's weights and bias.
 * 2. A channel Concat used only by Convs is removed: each Conv becomes one Conv per concatenated part (its weights
 *    split along input channels) summed with Add. onnxruntime keeps convolutions in its blocked NCHWc layout and
 *    fuses the Add (and a following Relu) into them, whereas a Concat costs two layout reorders and a copy.
 */
import type { AttributeValue, NodeData, TensorData } from './protobuf.js';

/** The graph being optimised: nodes in topological order and float initializers by name. */
export interface GraphData {
  nodes: NodeData[];
  initializers: TensorData[];
}

function consumers(nodes: readonly NodeData[]): Map<string, NodeData[]> {
  const map = new Map<string, NodeData[]>();
  for (const n of nodes) for (const i of n.inputs) map.set(i, [...(map.get(i) ?? []), n]);
  return map;
}

function intAttr(n: NodeData, name: string, fallback: number): number {
  const a = n.attributes[name] as AttributeValue | undefined;
  return a && a.type === 'int' ? a.value : fallback;
}

/** Folds BatchNormalization into the Conv before it. */
function foldBatchNorm(graph: GraphData, outputs: ReadonlySet<string>): void {
  const init = new Map(graph.initializers.map((t) => [t.name, t]));
  const used = consumers(graph.nodes);
  const producer = new Map(graph.nodes.flatMap((n) => n.outputs.map((o) => [o, n] as const)));
  const removed = new Set<NodeData>();
  for (const bn of graph.nodes) {
    if (bn.opType !== 'BatchNormalization') continue;
    const conv = producer.get(bn.inputs[0]);
    if (!conv || conv.opType !== 'Conv' || (used.get(conv.outputs[0]) ?? []).length !== 1) continue;
    if (outputs.has(conv.outputs[0])) continue;
    const [gamma, beta, mean, variance] = bn.inputs.slice(1).map((name) => init.get(name)?.values as Float32Array);
    const weight = init.get(conv.inputs[1]);
    if (!gamma || !beta || !mean || !variance || !weight) continue;
    const eps = (bn.attributes.epsilon as { value: number } | undefined)?.value ?? 1e-5;
    const co = weight.dims[0];
    const per = weight.values.length / co;
    const w = new Float32Array(weight.values as Float32Array);
    const oldBias = conv.inputs[2] ? (init.get(conv.inputs[2])?.values as Float32Array) : undefined;
    const b = new Float32Array(co);
    for (let o = 0; o < co; o++) {
      const s = gamma[o] / Math.sqrt(variance[o] + eps);
      for (let j = 0; j < per; j++) w[o * per + j] *= s;
      b[o] = ((oldBias?.[o] ?? 0) - mean[o]) * s + beta[o];
    }
    const wName = `${conv.name}/folded_weight`;
    const bName = `${conv.name}/folded_bias`;
    graph.initializers.push({ name: wName, dims: weight.dims, values: w }, { name: bName, dims: [co], values: b });
    const folded: NodeData = { ...conv, inputs: [conv.inputs[0], wName, bName], outputs: bn.outputs };
    graph.nodes[graph.nodes.indexOf(conv)] = folded;
    removed.add(bn);
  }
  graph.nodes = graph.nodes.filter((n) => !removed.has(n));
}

/** Replaces `Conv(Concat(a, b, ...))` by `Conv_a(a) + Conv_b(b) + ...`. */
function splitConcat(graph: GraphData, outputs: ReadonlySet<string>, channels: Map<string, number>): void {
  const init = new Map(graph.initializers.map((t) => [t.name, t]));
  const used = consumers(graph.nodes);
  for (const concat of [...graph.nodes]) {
    if (concat.opType !== 'Concat' || intAttr(concat, 'axis', -1) !== 1 || outputs.has(concat.outputs[0])) continue;
    const users = used.get(concat.outputs[0]) ?? [];
    const parts = concat.inputs.map((i) => channels.get(i));
    if (users.length === 0 || parts.some((c) => c === undefined)) continue;
    if (!users.every((u) => u.opType === 'Conv' && u.inputs[0] === concat.outputs[0] && intAttr(u, 'group', 1) === 1))
      continue;
    if (!users.every((u) => init.has(u.inputs[1]))) continue;
    for (const conv of users) {
      const weight = init.get(conv.inputs[1])!;
      const [co, ci, kh, kw] = weight.dims;
      const replacement: NodeData[] = [];
      let offset = 0;
      let sum: string | undefined;
      concat.inputs.forEach((input, p) => {
        const cp = parts[p]!;
        const w = new Float32Array(co * cp * kh * kw);
        for (let o = 0; o < co; o++)
          w.set(
            (weight.values as Float32Array).subarray((o * ci + offset) * kh * kw, (o * ci + offset + cp) * kh * kw),
            o * cp * kh * kw,
          );
        offset += cp;
        const wName = `${conv.name}/part${p}_weight`;
        graph.initializers.push({ name: wName, dims: [co, cp, kh, kw], values: w });
        const out = `${conv.name}/part${p}`;
        const inputs = p === 0 && conv.inputs[2] ? [input, wName, conv.inputs[2]] : [input, wName];
        replacement.push({ ...conv, name: out, inputs, outputs: [out] });
        if (sum === undefined) sum = out;
        else {
          const last = p === concat.inputs.length - 1;
          const added = last ? conv.outputs[0] : `${conv.name}/sum${p}`;
          replacement.push({
            name: `${conv.name}/add${p}`,
            opType: 'Add',
            inputs: [sum, out],
            outputs: [added],
            attributes: {},
          });
          sum = added;
        }
      });
      graph.nodes.splice(graph.nodes.indexOf(conv), 1, ...replacement);
    }
    graph.nodes.splice(graph.nodes.indexOf(concat), 1);
  }
}

/**
 * Applies the rewrites in place. `channels` gives the channel count of tensors where known (the Concat inputs);
 * `outputs` are graph outputs, which are never rewritten away.
 */
export function optimizeGraph(graph: GraphData, outputs: ReadonlySet<string>, channels: Map<string, number>): void {
  foldBatchNorm(graph, outputs);
  splitConcat(graph, outputs, channels);
  const needed = new Set(graph.nodes.flatMap((n) => n.inputs));
  graph.initializers = graph.initializers.filter((t) => needed.has(t.name));
}
