import { CanActivate, ExecutionContext, Injectable, UnauthorizedException } from '@nestjs/common';
import { Reflector } from '@nestjs/core';
import type { Request } from 'express';
import { keyFromAuthorization } from './api-key';
import { ApiKeyService } from './api-key.service';
import { IS_PUBLIC } from './public.decorator';

export interface AuthenticatedRequest extends Request {
  projectId: string;
}

/** Global guard: every route needs `Authorization: ApiKey <key>` unless marked @Public(). */
@Injectable()
export class ApiKeyGuard implements CanActivate {
  constructor(
    private readonly reflector: Reflector,
    private readonly apiKeys: ApiKeyService,
  ) {}

  async canActivate(context: ExecutionContext): Promise<boolean> {
    if (this.reflector.getAllAndOverride<boolean>(IS_PUBLIC, [context.getHandler(), context.getClass()])) return true;
    const request = context.switchToHttp().getRequest<AuthenticatedRequest>();
    const key = keyFromAuthorization(request.headers.authorization);
    if (!key) throw new UnauthorizedException('missing or malformed Authorization header; expected "ApiKey <key>"');
    const projectId = await this.apiKeys.projectOf(key);
    if (!projectId) throw new UnauthorizedException('unknown or revoked API key');
    request.projectId = projectId;
    return true;
  }
}
