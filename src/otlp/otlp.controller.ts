import {
  BadRequestException, Controller, HttpCode, Inject, Logger, PayloadTooLargeException, Post, Req, StreamableFile, UnsupportedMediaTypeException,
} from '@nestjs/common';
import { ApiBody, ApiConsumes, ApiOperation, ApiResponse, ApiSecurity, ApiTags } from '@nestjs/swagger';
import type { Request } from 'express';
import { ProjectId } from '../auth/project-id.decorator';
import { TakesOtlp } from '../http/request-bodies';
import { AppConfig } from '../config/app-config';
import { APP_CONFIG } from '../config/config.module';
import { ObservabilityService } from '../observability/observability.service';
import { TracingService } from '../tracing/tracing.service';
import { MAX_RESOURCE_ATTRIBUTE_BYTES, OtlpDecodeError, decodeOtlpJson, decodeOtlpProtobuf, otlpTraceService } from './otlp-decoder';
import { mapOtlpSpans } from './otlp-span.mapper';
import { OTLP_PROTOBUF } from './otlp-error-body';

const JSON_TYPE = 'application/json';

/**
 * OTLP/HTTP trace receiver: any OpenTelemetry SDK or collector can export to
 * POST /otlp/v1/traces with `Authorization: ApiKey <key>`. The response uses
 * the request's encoding, as the OTLP specification requires.
 */
@ApiTags('otlp')
@ApiSecurity('ApiKey')
@Controller('otlp/v1')
export class OtlpController {
  private readonly logger = new Logger(OtlpController.name);

  constructor(
    private readonly tracing: TracingService,
    private readonly observability: ObservabilityService,
    @Inject(APP_CONFIG) private readonly config: AppConfig,
  ) {}

  @Post('traces')
  @TakesOtlp()
  @HttpCode(200)
  @ApiOperation({
    summary: 'Receive an OTLP/HTTP trace export (binary protobuf or OTLP/JSON)',
    description:
      'Body: an ExportTraceServiceRequest. Every span is stored as a span and as an observability node; ' +
      'a retried export replaces what it wrote before. A request with any invalid span writes nothing (400). ' +
      `Each span stores its resource's attributes, so a resource may have at most ${MAX_RESOURCE_ATTRIBUTE_BYTES} bytes of them, as JSON (400). ` +
      'Error answers to a binary export are a protobuf google.rpc.Status (code and message), as OTLP/HTTP prescribes; to OTLP/JSON, the JSON Error.',
  })
  @ApiConsumes(OTLP_PROTOBUF, JSON_TYPE)
  @ApiBody({ schema: { type: 'object', properties: { resourceSpans: { type: 'array', items: { type: 'object' } } } } })
  @ApiResponse({ status: 200, description: 'Accepted: an ExportTraceServiceResponse in the request encoding' })
  @ApiResponse({ status: 400, description: 'Undecodable or invalid; names the first bad field by path' })
  @ApiResponse({ status: 415, description: 'Content-Type is neither application/x-protobuf nor application/json' })
  @ApiResponse({ status: 413, description: 'Body larger than BODY_LIMIT, or more spans than MAX_OTLP_SPANS' })
  async exportTraces(@ProjectId() projectId: string, @Req() request: Request): Promise<StreamableFile | { partialSuccess: object }> {
    const contentType = (request.headers['content-type'] ?? '').split(';')[0].trim().toLowerCase();
    if (contentType !== OTLP_PROTOBUF && contentType !== JSON_TYPE) {
      throw new UnsupportedMediaTypeException(`Content-Type must be ${OTLP_PROTOBUF} or ${JSON_TYPE}, got "${contentType.slice(0, 100)}"`);
    }
    // Without a body the parsers leave request.body unset: an empty export.
    const otlpSpans = decode(() =>
      contentType === OTLP_PROTOBUF
        ? decodeOtlpProtobuf(Buffer.isBuffer(request.body) ? request.body : Buffer.alloc(0))
        : decodeOtlpJson(request.body ?? {}),
    );
    // Not MAX_BATCH_ITEMS: a collector's batches are larger than REST callers' (see MAX_OTLP_SPANS).
    const max = this.config.http.maxOtlpSpans;
    if (otlpSpans.length > max) throw new PayloadTooLargeException(`spans: at most ${max} per OTLP export (MAX_OTLP_SPANS), got ${otlpSpans.length}`);
    const { spans, nodes } = decode(() => mapOtlpSpans(otlpSpans));
    // Spans, then nodes; both are upserts keyed by id, so if the second write
    // fails the exporter's retry rewrites both and the two converge.
    await this.tracing.createSpans(projectId, spans, { userId: null, upsert: true });
    await this.observability.ingestNodes(projectId, nodes);
    this.logger.debug({ projectId, spans: spans.length, traces: new Set(spans.map((s) => s.trace_id)).size, contentType }, 'otlp export stored');

    if (contentType === JSON_TYPE) return { partialSuccess: {} };
    const response = otlpTraceService.ExportTraceServiceResponse.encode({}).finish();
    return new StreamableFile(Buffer.from(response), { type: OTLP_PROTOBUF, length: response.length });
  }
}

/** Decoding and mapping refuse a request by throwing an OtlpDecodeError: a 400 naming the OTLP field. */
function decode<T>(run: () => T): T {
  try {
    return run();
  } catch (error) {
    if (!(error instanceof OtlpDecodeError)) throw error;
    throw new BadRequestException({
      statusCode: 400,
      error: 'Bad Request',
      message: error.message,
      errors: [{ field: error.path, message: error.reason }],
    });
  }
}
