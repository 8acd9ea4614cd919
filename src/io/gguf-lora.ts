/**
 * LoRA adapters as GGUF files, as llama.cpp's convert_lora_to_gguf.py writes a PEFT adapter (llama.cpp's `--lora`,
 * llama_adapter_lora_init): `general.type` adapter, `adapter.type` lora, `adapter.lora.alpha`, and for each adapted
 * weight W (llama.cpp's name) `W.lora_a` (PEFT's lora_A, [r, in]) and `W.lora_b` (lora_B, [out, r]). llama.cpp scales
 * B·A by alpha / r, r read from the tensors.
 */
import { GGUFFile, type GGUFMetaValue, writeGGUF } from './gguf';

export interface GGUFLoraPair {
  /** llama.cpp's name of the adapted weight (`blk.0.attn_q.weight`). */
  name: string;
  a: { shape: number[]; data: Float32Array };
  b: { shape: number[]; data: Float32Array };
}

/**
 * Writes a LoRA adapter for a model of llama.cpp architecture `arch` (`nemotron`, `nemotron_h`, `nemotron_h_moe`):
 * the pairs in the order given, in F32 or F16; `alpha` PEFT's lora_alpha (an rsLoRA adapter's alpha·√r).
 */
export function writeLoraGGUF(file: string, arch: string, alpha: number, pairs: GGUFLoraPair[],
  options: { type?: 'F32' | 'F16'; name?: string } = {}): void {
  const type = options.type ?? 'F32';
  const kv: Array<[string, GGUFMetaValue]> = [
    ['general.architecture', ['str', arch]], ['general.type', ['str', 'adapter']], ['adapter.type', ['str', 'lora']],
    ['general.name', ['str', options.name ?? 'Adapter']], ['adapter.lora.alpha', ['f32', alpha]], ['general.quantization_version', ['u32', 2]],
  ];
  writeGGUF(file, kv, pairs.flatMap((p) => [
    { name: `${p.name}.lora_a`, shape: p.a.shape, data: p.a.data, type },
    { name: `${p.name}.lora_b`, shape: p.b.shape, data: p.b.data, type },
  ]));
}

/**
 * A GGUF LoRA adapter (llama.cpp's --lora file) read back: its alpha (llama.cpp scales B·A by alpha / r; none or 0
 * means a scale of 1) and each adapted weight's A and B as float32. Refuses other files, architectures not in
 * `architectures`, and tensors that are not lora_a / lora_b pairs of one rank (mergekit's norms or embeddings).
 */
export function readLoraGGUF(file: string, architectures: string[]): { alpha: number; rank: number; pairs: GGUFLoraPair[] } {
  const gguf = GGUFFile.open(file);
  try {
    if (gguf.get('general.type') !== 'adapter' || gguf.get('adapter.type') !== 'lora') {
      throw new Error(`${file} is not a GGUF LoRA adapter (general.type ${JSON.stringify(gguf.get('general.type') ?? null)}, adapter.type ${JSON.stringify(gguf.get('adapter.type') ?? null)})`);
    }
    const arch = String(gguf.get('general.architecture'));
    if (!architectures.includes(arch)) throw new Error(`${file} adapts a ${arch} model, not ${architectures.join(' or ')}`);
    const pairs: GGUFLoraPair[] = [];
    for (const name of gguf.tensors.keys()) {
      if (name.endsWith('.lora_b')) continue;
      if (!name.endsWith('.lora_a')) throw new Error(`${file}: tensor ${name} is not a lora_a / lora_b (only LoRA pairs are read)`);
      const base = name.slice(0, -'.lora_a'.length);
      if (!gguf.tensors.has(`${base}.lora_b`)) throw new Error(`${file}: ${name} has no ${base}.lora_b`);
      pairs.push({ name: base, a: gguf.read(name), b: gguf.read(`${base}.lora_b`) });
    }
    const orphan = [...gguf.tensors.keys()].find((n) => n.endsWith('.lora_b') && !gguf.tensors.has(`${n.slice(0, -'.lora_b'.length)}.lora_a`));
    if (orphan) throw new Error(`${file}: ${orphan} has no lora_a`);
    if (pairs.length === 0) throw new Error(`${file} holds no LoRA pairs`);
    const rank = pairs[0].a.shape[0];
    for (const p of pairs) {
      if (p.a.shape.length !== 2 || p.b.shape.length !== 2 || p.a.shape[0] !== rank || p.b.shape[1] !== rank) {
        throw new Error(`${file}: ${p.name}'s lora_a [${p.a.shape}] and lora_b [${p.b.shape}] are not a rank-${rank} pair (one rank for every module is supported)`);
      }
    }
    return { alpha: Number(gguf.get('adapter.lora.alpha') ?? 0), rank, pairs };
  } finally {
    gguf.close();
  }
}
