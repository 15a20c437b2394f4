import { Body, Controller, Delete, Get, HttpCode, Inject, NotFoundException, Param, Post } from '@nestjs/common';
import { ApiBody, ApiOperation, ApiResponse, ApiSecurity, ApiTags } from '@nestjs/swagger';
import { ProjectId } from '../auth/project-id.decorator';
import { AppConfig } from '../config/app-config';
import { APP_CONFIG } from '../config/config.module';
import { assertBatchSize } from '../http/batch-limit';
import { openApiSchema, parseBody, parseParam } from '../http/zod-validation';
import { nodeQuerySchema, nodesBodySchema, uuidSchema } from './dto/node.schema';
import { ObservabilityService } from './observability.service';

@ApiTags('observability')
@ApiSecurity('ApiKey')
@Controller('observability')
export class ObservabilityController {
  constructor(
    private readonly observability: ObservabilityService,
    @Inject(APP_CONFIG) private readonly config: AppConfig,
  ) {}

  @Post('nodes')
  @ApiOperation({ summary: 'Ingest nodes (atomic; an existing node_id is replaced)' })
  @ApiResponse({
    status: 201,
    description: 'Stored: `count` and the stored `nodes`. A node_id the project holds already is replaced whole (its tree_id too: the node moves to that tree), never a 409',
  })
  @ApiBody({ schema: openApiSchema(nodesBodySchema) })
  async ingestNodes(@ProjectId() projectId: string, @Body() body: unknown) {
    assertBatchSize(body, 'nodes', this.config.http.maxBatchItems);
    const { nodes } = parseBody(nodesBodySchema, body);
    const stored = await this.observability.ingestNodes(projectId, nodes);
    return { count: stored.length, nodes: stored };
  }

  @Post('nodes/query')
  @HttpCode(200)
  @ApiOperation({ summary: 'Query nodes by tree, type, name and time window, newest first, with a cursor' })
  @ApiResponse({ status: 200, description: '`count`, the page\'s `nodes`, and `next` (pass it as `next` for the following page; null on the last)' })
  @ApiResponse({ status: 422, description: 'The page is larger than one JSON answer can hold (about 512 MB); the message says to ask for a smaller limit' })
  @ApiBody({ schema: openApiSchema(nodeQuerySchema) })
  async queryNodes(@ProjectId() projectId: string, @Body() body: unknown) {
    const page = await this.observability.queryNodePage(projectId, parseBody(nodeQuerySchema, body ?? {}), { maxNodes: this.config.http.maxResponseItems });
    return { count: page.nodes.length, nodes: page.nodes, next: page.next };
  }

  @Get('trees/:treeId')
  @ApiOperation({ summary: 'Read every node of a tree' })
  @ApiResponse({ status: 200, description: 'The tree\'s `nodes`' })
  @ApiResponse({ status: 404, description: 'No node of this tree in this project' })
  @ApiResponse({ status: 422, description: 'The tree has more nodes than MAX_RESPONSE_ITEMS; the message says how to read it in pages' })
  async readTree(@ProjectId() projectId: string, @Param('treeId') treeId: string) {
    const id = parseParam(uuidSchema, treeId, 'treeId');
    const nodes = await this.observability.readTree(projectId, id, { maxNodes: this.config.http.maxResponseItems });
    if (nodes.length === 0) throw new NotFoundException(`tree ${id} not found`);
    return { nodes };
  }

  @Delete('trees/:treeId')
  @ApiOperation({ summary: 'Delete every node of a tree' })
  @ApiResponse({ status: 200, description: '`count` of nodes deleted' })
  @ApiResponse({ status: 404, description: 'No node of this tree in this project' })
  async deleteTree(@ProjectId() projectId: string, @Param('treeId') treeId: string) {
    const id = parseParam(uuidSchema, treeId, 'treeId');
    const count = await this.observability.deleteTrees(projectId, [id]);
    if (count === 0) throw new NotFoundException(`tree ${id} not found`);
    return { count };
  }
}
