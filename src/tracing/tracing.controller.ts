import { z } from 'zod';
import { Body, Controller, Delete, Get, HttpCode, Inject, NotFoundException, Param, Post, Put } from '@nestjs/common';
import { ApiBody, ApiOperation, ApiResponse, ApiSecurity, ApiTags } from '@nestjs/swagger';
import { ProjectId } from '../auth/project-id.decorator';
import { AppConfig } from '../config/app-config';
import { APP_CONFIG } from '../config/config.module';
import { assertBatchSize } from '../http/batch-limit';
import { openApiSchema, parseBody, parseParam } from '../http/zod-validation';
import { ANALYTICS_QUERY_BODY, SPAN_QUERY_BODY } from './span-query.openapi';
import { spanIdSchema, spanKeysBodySchema, spansBodySchema, traceIdSchema } from './dto/span.schema';
import { parseAnalyticsQuery, parseSpanQuery } from './span-query.parser';
import { TracingService } from './tracing.service';

/** Both ids of GET /tracing/spans/:traceId/:spanId, checked together so a 400 names each bad one. */
const spanPathSchema = z.object({ traceId: traceIdSchema, spanId: spanIdSchema });

@ApiTags('tracing')
@ApiSecurity('ApiKey')
@Controller('tracing')
export class TracingController {
  constructor(
    private readonly tracing: TracingService,
    @Inject(APP_CONFIG) private readonly config: AppConfig,
  ) {}

  @Post('spans')
  @ApiOperation({ summary: 'Create spans (atomic: all or none; 409 if any already exists)' })
  @ApiResponse({ status: 201, description: 'Created: `count` and the stored `spans`' })
  @ApiResponse({ status: 409, description: 'A span with the same trace_id and span_id exists; the message names them and nothing is written' })
  @ApiBody({ schema: openApiSchema(spansBodySchema) })
  async createSpans(@ProjectId() projectId: string, @Body() body: unknown) {
    assertBatchSize(body, 'spans', this.config.http.maxBatchItems);
    const { spans } = parseBody(spansBodySchema, body);
    const stored = await this.tracing.createSpans(projectId, spans);
    return { count: stored.length, spans: stored };
  }

  @Put('spans')
  @ApiOperation({ summary: 'Replace existing spans (atomic; 404 if any is missing)' })
  @ApiResponse({ status: 200, description: 'Replaced: `count` and the stored `spans`' })
  @ApiResponse({ status: 404, description: 'A span does not exist; the message names it and nothing is written' })
  @ApiBody({ schema: openApiSchema(spansBodySchema) })
  async updateSpans(@ProjectId() projectId: string, @Body() body: unknown) {
    assertBatchSize(body, 'spans', this.config.http.maxBatchItems);
    const { spans } = parseBody(spansBodySchema, body);
    const stored = await this.tracing.updateSpans(projectId, spans);
    return { count: stored.length, spans: stored };
  }

  @Delete('spans')
  @ApiOperation({ summary: 'Delete spans by key' })
  @ApiBody({ schema: openApiSchema(spanKeysBodySchema) })
  async deleteSpans(@ProjectId() projectId: string, @Body() body: unknown) {
    assertBatchSize(body, 'spans', this.config.http.maxBatchItems);
    const { spans } = parseBody(spanKeysBodySchema, body);
    return { count: await this.tracing.deleteSpans(projectId, spans) };
  }

  @Get('spans/:traceId/:spanId')
  @ApiOperation({ summary: 'Read one span' })
  @ApiResponse({ status: 200, description: 'The `span`' })
  @ApiResponse({ status: 404, description: 'No such span in this project' })
  async readSpan(@ProjectId() projectId: string, @Param('traceId') traceId: string, @Param('spanId') spanId: string) {
    const { traceId: trace_id, spanId: span_id } = parseParam(spanPathSchema, { traceId, spanId }, '(path)');
    const key = { trace_id, span_id };
    const [span] = await this.tracing.readSpans(projectId, [key]);
    if (!span) throw new NotFoundException(`span ${key.trace_id}/${key.span_id} not found`);
    return { span };
  }

  @Get('traces/:traceId')
  @ApiOperation({ summary: 'Read every span of a trace' })
  @ApiResponse({ status: 200, description: 'The trace\'s `spans`, by start time' })
  @ApiResponse({ status: 404, description: 'No span of this trace in this project' })
  @ApiResponse({ status: 422, description: 'The trace has more spans than MAX_RESPONSE_ITEMS; the message says how to read it in pages' })
  async readTrace(@ProjectId() projectId: string, @Param('traceId') traceId: string) {
    const id = parseParam(traceIdSchema, traceId, 'traceId');
    const spans = await this.tracing.readTraces(projectId, [id], { maxSpans: this.config.http.maxResponseItems });
    if (spans.length === 0) throw new NotFoundException(`trace ${id} not found`);
    return { spans };
  }

  @Delete('traces/:traceId')
  @ApiOperation({ summary: 'Delete every span of a trace' })
  @ApiResponse({ status: 200, description: '`count` of spans deleted' })
  @ApiResponse({ status: 404, description: 'No span of this trace in this project' })
  async deleteTrace(@ProjectId() projectId: string, @Param('traceId') traceId: string) {
    const id = parseParam(traceIdSchema, traceId, 'traceId');
    const count = await this.tracing.deleteTraces(projectId, [id]);
    if (count === 0) throw new NotFoundException(`trace ${id} not found`);
    return { count };
  }

  @Post('spans/query')
  @HttpCode(200)
  @ApiOperation({
    summary: 'Query spans: filtering tree, windowing with a cursor, focus trace or span',
    description:
      'Focus span pages by start_time, trace_id and span_id; focus trace by each trace\'s start (its earliest span), then trace_id. ' +
      'A trace\'s start moves when an earlier span of it arrives (exporters often send the root last), or when its earliest span ' +
      'is deleted or replaced: while that happens to a window\'s traces, a later page can repeat a trace or miss one; a window no one is writing pages exactly.',
  })
  @ApiResponse({ status: 200, description: '`count`, the page\'s `spans`, and `next` (a cursor for the following page, or null). Focus trace: whole traces, at most MAX_RESPONSE_ITEMS spans in all (a page may hold fewer traces than `limit`)' })
  @ApiResponse({
    status: 422,
    description:
      'Focus trace: the page\'s first trace alone has more spans than MAX_RESPONSE_ITEMS; the message says how to read it in pages, and `next` is the cursor ' +
      'past it. Or the page is larger than one JSON answer can hold (about 512 MB); the message says to ask for a smaller limit',
  })
  @ApiBody({ schema: SPAN_QUERY_BODY, required: false })
  async query(@ProjectId() projectId: string, @Body() body: unknown) {
    const page = await this.tracing.query(projectId, parseSpanQuery(body ?? {}), { maxSpans: this.config.http.maxResponseItems });
    return { count: page.spans.length, spans: page.spans, next: page.next };
  }

  @Post('analytics/query')
  @HttpCode(200)
  @ApiOperation({
    summary: 'Time buckets of count, errors, duration, tokens and costs',
    description:
      'Costs are attributes.ag.metrics.costs.cumulative.total; tokens attributes.ag.metrics.tokens.cumulative.total, else ' +
      'gen_ai.usage.input_tokens plus output_tokens: nested objects, as OTLP stores dotted keys (a REST span whose attributes ' +
      'hold the flat key "gen_ai.usage.input_tokens" counts no tokens). With focus trace each trace is measured once, from its root spans ' +
      '(see focus); its tokens: from each root down, a span\'s cumulative total, else its own gen_ai usage, where it has one (it covers the ' +
      'spans below it), else the figures of the spans below it.',
  })
  @ApiResponse({ status: 200, description: '`count` and the `buckets`, one per interval (empty ones included)' })
  @ApiBody({ schema: ANALYTICS_QUERY_BODY })
  async analytics(@ProjectId() projectId: string, @Body() body: unknown) {
    const buckets = await this.tracing.analytics(projectId, parseAnalyticsQuery(body ?? {}));
    return { count: buckets.length, buckets };
  }
}
