import {
  BadRequestException, Controller, HttpCode, Inject, Logger, PayloadTooLargeException, Post, Req, StreamableFile, UnsupportedMediaTypeException,
} from '@nestjs/common';
import { ApiBody, ApiConsumes, ApiOperation, ApiResponse, ApiSecurity, ApiTags } from '@nestjs/swagger';
import type { Request } from 'express';
import { Counter, Registry } from 'prom-client';
import { ProjectId } from '../auth/project-id.decorator';
import { answerTo } from '../http/http-exception.filter';
import { TakesOtlp } from '../http/request-bodies';
import { AppConfig } from '../config/app-config';
import { APP_CONFIG } from '../config/config.module';
import { ONE_TRANSACTION, OneTransaction } from '../dbs/write-scope';
import { METRICS_REGISTRY } from '../metrics/metrics.tokens';
import { ObservabilityService } from '../observability/observability.service';
import { TracingService } from '../tracing/tracing.service';
import { MAX_RESOURCE_ATTRIBUTE_BYTES, MAX_RESOURCE_COPY_BYTES, MAX_SCOPE_FIELD_LENGTH, OtlpDecodeError, OtlpRejection, OtlpTooLargeError, decodeOtlpJson, decodeOtlpProtobuf, otlpTraceService } from './otlp-decoder';
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
  private readonly rejectedSpans: Counter;

  constructor(
    private readonly tracing: TracingService,
    private readonly observability: ObservabilityService,
    @Inject(ONE_TRANSACTION) private readonly oneTransaction: OneTransaction,
    @Inject(APP_CONFIG) private readonly config: AppConfig,
    @Inject(METRICS_REGISTRY) registry: Registry,
  ) {
    this.rejectedSpans = new Counter({
      name: 'otlp_spans_rejected_total',
      help: 'OTLP spans refused as invalid, once per export: alone (a partial success), with their export when it had no valid span (400), or when its store failed with an answer exporters do not retry',
      registers: [registry],
    });
  }

  @Post('traces')
  @TakesOtlp()
  @HttpCode(200)
  @ApiOperation({
    summary: 'Receive an OTLP/HTTP trace export (binary protobuf or OTLP/JSON)',
    description:
      'Body: an ExportTraceServiceRequest. Every span is stored as a span and as an observability node, all in one transaction (an export that fails stores nothing); ' +
      'a retried export replaces what it wrote before. Invalid spans are refused and the others stored: the answer\'s ' +
      'partialSuccess gives how many were refused and why (a bad resource or scope refuses all of its spans). ' +
      'An export with nothing valid to store, or that cannot be read at all, is refused whole (400). ' +
      `Each span stores its resource's attributes, so a resource may have at most ${MAX_RESOURCE_ATTRIBUTE_BYTES} bytes of them, as JSON, ` +
      `and an export's resources may store at most ${MAX_RESOURCE_COPY_BYTES} bytes with their spans (each resource's bytes times its spans, summed); ` +
      'a resource past either refuses its spans. ' +
      `A scope's name and version may have at most ${MAX_SCOPE_FIELD_LENGTH} characters each, and count against the same bound with their spans. ` +
      'Error answers to a binary export are a protobuf google.rpc.Status (code and message), as OTLP/HTTP prescribes; to OTLP/JSON, the JSON Error.',
  })
  @ApiConsumes(OTLP_PROTOBUF, JSON_TYPE)
  @ApiBody({ schema: { type: 'object', properties: { resourceSpans: { type: 'array', items: { type: 'object' } } } } })
  @ApiResponse({ status: 200, description: 'Stored: an ExportTraceServiceResponse in the request encoding, its partialSuccess set when some spans were refused' })
  @ApiResponse({ status: 400, description: 'Undecodable, or no valid span to store; names the bad fields by path' })
  @ApiResponse({ status: 415, description: 'Content-Type is neither application/x-protobuf nor application/json' })
  @ApiResponse({ status: 413, description: 'Body larger than BODY_LIMIT, or more spans (or resources, or scopes) than MAX_OTLP_SPANS' })
  async exportTraces(@ProjectId() projectId: string, @Req() request: Request): Promise<StreamableFile | { partialSuccess: object }> {
    const contentType = (request.headers['content-type'] ?? '').split(';')[0].trim().toLowerCase();
    if (contentType !== OTLP_PROTOBUF && contentType !== JSON_TYPE) {
      throw new UnsupportedMediaTypeException(`Content-Type must be ${OTLP_PROTOBUF} or ${JSON_TYPE}, got "${contentType.slice(0, 100)}"`);
    }
    // Not MAX_BATCH_ITEMS: a collector's batches are larger than REST callers' (see MAX_OTLP_SPANS). The decoders
    // count an export's spans (and resources and scopes) before they walk it, each entry walked can become a refusal,
    // and the protobuf decode stops past the bound.
    const max = this.config.http.maxOtlpSpans;
    // Without a body the parsers leave request.body unset: an empty export.
    const decoded = readable(() =>
      contentType === OTLP_PROTOBUF
        ? decodeOtlpProtobuf(Buffer.isBuffer(request.body) ? request.body : Buffer.alloc(0), max)
        : decodeOtlpJson(request.body ?? {}, max),
    );
    const sent = decoded.spans.length + spansIn(decoded.rejected);
    const { spans, nodes, rejected: unstorable } = mapOtlpSpans(decoded.spans);
    const rejected = [...decoded.rejected, ...unstorable];
    // Nothing to store and something wrong: the export is refused, so its sender hears of it as an error.
    if (spans.length === 0 && rejected.length > 0) {
      this.rejectedSpans.inc(spansIn(rejected));
      throw refusal(rejected);
    }

    // Spans and nodes in one transaction: an export that fails (a 503 the exporter retries, or gives up on)
    // stores neither, rather than spans without their nodes. Both are upserts keyed by id, so a retry rewrites them.
    // An empty export (an SDK's flush with nothing in it) touches no database, so it is answered while Postgres is down.
    if (spans.length > 0) {
      try {
        await this.oneTransaction(async () => {
          await this.tracing.createSpans(projectId, spans, { userId: null, upsert: true });
          await this.observability.ingestNodes(projectId, nodes);
        });
      } catch (error) {
        // An answer exporters retry brings the refused spans back with the export, to be counted then; after any
        // other, the exporter drops the export, and they are counted now.
        if (!EXPORTERS_RETRY.has(answerTo(error)[0])) this.rejectedSpans.inc(spansIn(rejected));
        throw error;
      }
    }
    this.logger.debug({ projectId, spans: spans.length, traces: new Set(spans.map((s) => s.trace_id)).size, contentType }, 'otlp export stored');

    // Counted once the rest is stored (or its store failed for good, above): a failed export can come again.
    this.rejectedSpans.inc(spansIn(rejected));
    const partialSuccess = rejected.length > 0 || decoded.ignored.length > 0 ? this.partialSuccess(projectId, rejected, sent, decoded.ignored) : null;
    if (contentType === JSON_TYPE) {
      // Proto3 JSON writes an int64 as a decimal string.
      return { partialSuccess: partialSuccess ? { ...partialSuccess, rejectedSpans: String(partialSuccess.rejectedSpans) } : {} };
    }
    const response = otlpTraceService.ExportTraceServiceResponse.encode(partialSuccess ? { partialSuccess } : {}).finish();
    return new StreamableFile(Buffer.from(response), { type: OTLP_PROTOBUF, length: response.length });
  }

  /**
   * OTLP's partial success: the spans refused, and why, and the fields that
   * were ignored where spans were expected (with none refused, OTLP's
   * warning). Exporters do not retry it (the rest is stored), but they log
   * it; so does this receiver.
   */
  private partialSuccess(projectId: string, rejected: OtlpRejection[], sent: number, ignored: string[]): { rejectedSpans: number; errorMessage: string } {
    const rejectedSpans = spansIn(rejected);
    const shown = rejected.slice(0, SHOWN_REJECTIONS).map((r) => r.error.message);
    const more = rejected.length - shown.length;
    const refused = rejected.length > 0 ? `${rejectedSpans} of ${sent} spans refused: ${shown.join('; ')}${more > 0 ? `; and ${more} more` : ''}` : null;
    const errorMessage = [refused, ...ignored].filter((part) => part !== null).join('; ');
    this.logger.warn(
      { projectId, rejectedSpans, sent, problems: rejected.length, ignored: ignored.length, errorMessage },
      rejected.length > 0 ? 'otlp export partly refused' : 'otlp export held fields this receiver ignores where spans belong',
    );
    return { rejectedSpans, errorMessage };
  }
}

/** The answers OTLP exporters retry (the OTLP/HTTP specification's retryable statuses). */
const EXPORTERS_RETRY = new Set([429, 502, 503, 504]);

/** How many refusals a partial success or a 400 spells out; the count covers them all. */
const SHOWN_REJECTIONS = 5;

function spansIn(rejected: OtlpRejection[]): number {
  return rejected.reduce((sum, r) => sum + r.spans, 0);
}

/** A 400 naming the refused fields by their OTLP path (the first few; the message says how many in all). */
function refusal(rejected: OtlpRejection[]): BadRequestException {
  const [first] = rejected;
  const more = rejected.length - 1;
  return new BadRequestException({
    statusCode: 400,
    error: 'Bad Request',
    message: more > 0 ? `${first.error.message} (and ${more} more)` : first.error.message,
    errors: rejected.slice(0, SHOWN_REJECTIONS).map((r) => ({ field: r.error.path, message: r.error.reason })),
  });
}

/** A body that cannot be read as an export at all is refused whole: a 400 naming what is wrong with it (a 413 when it holds too much). */
function readable<T>(run: () => T): T {
  try {
    return run();
  } catch (error) {
    if (error instanceof OtlpTooLargeError) throw new PayloadTooLargeException(error.message);
    if (!(error instanceof OtlpDecodeError)) throw error;
    throw refusal([{ error, spans: 0 }]);
  }
}
