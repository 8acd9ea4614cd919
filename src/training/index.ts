export * from './data';
export * from './optimizer';
export * from './schedule';
export * from './trainer';
export * from './lora';
export * from './metrics';
