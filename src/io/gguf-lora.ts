/**
 * LoRA adapters as GGUF files, as llama.cpp's convert_lora_to_gguf.py writes a PEFT adapter (llama.cpp's `--lora`,
 * llama_adapter_lora_init): `general.type` adapter, `adapter.type` lora, `adapter.lora.alpha`, and for each adapted
 * weight W (llama.cpp's name) `W.lora_a` (PEFT's lora_A, [r, in]) and `W.lora_b` (lora_B, [out, r]). llama.cpp scales
 * B·A by alpha / r, r read from the tensors.
 */
import { type GGUFMetaValue, writeGGUF } from './gguf';

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
