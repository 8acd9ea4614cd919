export type ScheduleName = 'constant' | 'linear' | 'cosine';

export interface ScheduleOptions {
  name: ScheduleName;
  lr: number;
  totalSteps: number;
  warmupSteps?: number;
}

/**
 * The learning rate at an optimizer step (0-based), as transformers' get_constant_schedule_with_warmup,
 * get_linear_schedule_with_warmup and get_cosine_schedule_with_warmup compute it.
 */
export function learningRate(step: number, o: ScheduleOptions): number {
  if (!(o.lr > 0)) throw new Error(`learning rate must be > 0, got ${o.lr}`);
  const warmup = o.warmupSteps ?? 0;
  if (step < warmup) return (o.lr * step) / Math.max(1, warmup);
  switch (o.name) {
    case 'constant':
      return o.lr;
    case 'linear':
      return o.lr * Math.max(0, (o.totalSteps - step) / Math.max(1, o.totalSteps - warmup));
    case 'cosine': {
      const progress = (step - warmup) / Math.max(1, o.totalSteps - warmup);
      return o.lr * Math.max(0, 0.5 * (1 + Math.cos(Math.PI * progress)));
    }
    default:
      throw new Error(`Unknown schedule ${JSON.stringify(o.name)}; expected constant, linear or cosine`);
  }
}
