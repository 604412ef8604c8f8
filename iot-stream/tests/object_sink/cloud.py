"""The cloud side of the object sink's tests, with each service's own Python client (boto3 for S3,
azure-storage-blob for Azure Blob), not with object_store:

  cloud.py s3 ENDPOINT create BUCKET
  cloud.py s3 ENDPOINT download BUCKET PREFIX DEST
  cloud.py az ENDPOINT create CONTAINER
  cloud.py az ENDPOINT download CONTAINER PREFIX DEST

`download` writes every object under PREFIX to DEST/<name below PREFIX> and prints the count.
For Azure, ENDPOINT is the account's blob URL (Azurite: http://127.0.0.1:PORT/devstoreaccount1)
and the account is Azurite's well-known development account."""
import os
import sys

kind, endpoint, command, bucket = sys.argv[1:5]
prefix = sys.argv[5].strip("/") + "/" if command == "download" and sys.argv[5] else ""


def target(dest, name):
    path = os.path.join(dest, name[len(prefix):])
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return path


count = 0
if kind == "s3":
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                      aws_access_key_id="testing", aws_secret_access_key="testing")
    if command == "create":
        s3.create_bucket(Bucket=bucket)
    else:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                s3.download_file(bucket, item["Key"], target(sys.argv[6], item["Key"]))
                count += 1
elif kind == "az":
    from azure.storage.blob import BlobServiceClient

    account = "devstoreaccount1"
    key = ("Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq"
           "/K1SZFPTOtr/KBHBeksoGMGw==")
    service = BlobServiceClient(account_url=endpoint,
                                credential={"account_name": account, "account_key": key})
    container = service.get_container_client(bucket)
    if command == "create":
        container.create_container()
    else:
        for blob in container.list_blobs(name_starts_with=prefix):
            with open(target(sys.argv[6], blob.name), "wb") as out:
                out.write(container.download_blob(blob.name).readall())
            count += 1
else:
    sys.exit(f"unknown store kind {kind}")
print(count)
