/** A UUID in its canonical text form, any case: project ids, node ids. The one check the API, its commands and its config share. */
export const isUuid = (value: string): boolean => /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i.test(value);
