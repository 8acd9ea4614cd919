export { type Json, CONTENT_PARSERS, parseContent } from './content';
export { type CompiledPattern, compilePythonPattern } from './pattern';
export { type ResponseTemplate, type ResponseTemplateSpec, loadResponseTemplate } from './template';
export { type ResponseEvent, type ResponseParserOptions, type ToolSpec, ResponseParser, parseResponse } from './parser';
