"""Turn schema.sql into a C translation unit defining hp_schema_sql_text[].

Run by meson at build time so that schema.sql stays the one source of the schema."""
import sys


def main(src: str, dst: str) -> None:
    data = open(src, "rb").read()
    body = ",".join(str(b) for b in data)
    with open(dst, "w") as out:
        out.write("/* Generated from schema/schema.sql by embed_sql.py; do not edit. */\n")
        out.write("const char hp_schema_sql_text[] = {%s,0};\n" % body)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
